import json
import shutil

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_seed_example, tiny_model

import quantens
import zoo
from quantens.distillation import AVERAGE, TEACHER, Distillation, kd_loss, kd_pairs

pytestmark = pytest.mark.trains  # trains or traces whole models: not in `make test-fast`

BITS = (32, 4, 1)


@pytest.fixture(scope="module")
def batch(digits_arrays):
    x, y, _, _ = digits_arrays
    return x[:16], y[:16]


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_kd_loss_equals_a_hand_computation(rng):
    student = rng.normal(size=(5, 7)).astype("float32") * 3
    target = rng.normal(size=(5, 7)).astype("float32") * 3
    for t in (1.0, 2.0, 4.0):
        p, q = softmax(target / t), softmax(student / t)
        expected = t * t * (p * (np.log(p) - np.log(q))).sum(-1)
        np.testing.assert_allclose(kd_loss(student, target, t), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(kd_loss(target, target, 3.0), 0, atol=1e-6)


def test_kd_pairs_per_mode():
    assert kd_pairs("none", BITS, has_teacher=True) == []
    assert kd_pairs("simple", (1, 32, 4), has_teacher=True) == [
        (32, TEACHER), (4, TEACHER), (1, TEACHER)]
    assert kd_pairs("progressive", BITS, has_teacher=True) == [(32, TEACHER), (4, 32), (1, 4)]
    assert kd_pairs("progressive", BITS, has_teacher=False) == [(4, 32), (1, 4)]
    with pytest.raises(ValueError, match="needs a teacher"):
        kd_pairs("simple", BITS, has_teacher=False)
    with pytest.raises(ValueError, match="unknown kd mode"):
        kd_pairs("mutual", BITS, has_teacher=False)


def make_ensemble(distillation=None, optimizer=None, ce_weight=1.0):
    tf.keras.utils.set_random_seed(0)
    ensemble = quantens.QuantEnsemble(
        tiny_model(BITS), BITS, member_loss_weights={b: ce_weight for b in BITS}
    )
    if distillation is not None:
        ensemble.set_distillation(distillation)
    ensemble.compile(optimizer=optimizer or tf.keras.optimizers.SGD(0.1))
    return ensemble


def kernels_of(model):
    return [v for v in model.trainable_variables if "block" in v.name and "kernel" in v.name]


def test_progressive_gradients_reach_the_kernel_only_through_the_student(batch):
    x, y = batch
    distillation = Distillation(BITS, "progressive", teacher=None, temperature=2.0)
    ensemble = make_ensemble(distillation, ce_weight=0.0)
    kernels = kernels_of(ensemble.model)
    with tf.GradientTape(persistent=True) as tape:
        logits = ensemble.member_logits(x, training=True)
        targets, _ = distillation.targets(logits)
        pairs = distillation.pair_losses(logits, targets)
        total, _ = ensemble.compute_ensemble_loss(x, y, logits)
    assert set(pairs) == {(4, 32), (1, 4)}
    reference_sum = None
    for (student, target), loss in pairs.items():
        fixed = logits[target].numpy()  # the target as a constant: no gradient into it
        with tf.GradientTape() as ref_tape:
            with quantens.bits(student):
                z = ensemble.model(x, training=True)
            ref = tf.reduce_mean(kd_loss(z, fixed, 2.0))
        expected = ref_tape.gradient(ref, kernels)
        got = tape.gradient(loss, kernels)
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(g, e, atol=1e-5)
        assert max(float(np.abs(g).max()) for g in got) > 0
        reference_sum = expected if reference_sum is None else [
            a + b for a, b in zip(reference_sum, expected, strict=True)]
    # with the members' CE weighted 0, the whole loss is the two KD pairs
    for g, e in zip(tape.gradient(total, kernels), reference_sum, strict=True):
        np.testing.assert_allclose(g, e, atol=1e-5)


def test_simple_pairs_every_member_with_the_teacher(batch):
    x, y = batch
    teacher = zoo.create_teacher("cifar_resnet20_v1", (8, 8, 1), 10)
    distillation = Distillation(BITS, "simple", teacher, "pretrained_external", temperature=3.0,
                                weight=0.5)
    ensemble = make_ensemble(distillation, ce_weight=0.0)
    logits = {b: z.numpy() for b, z in ensemble.member_logits(x, training=True).items()}
    teacher_logits = teacher(x, training=False).numpy()
    expected = sum(0.5 * kd_loss(logits[b], teacher_logits, 3.0).numpy().mean() for b in BITS)
    logs = ensemble.train_on_batch(x, y, return_dict=True)
    assert logs["kd_loss"] == pytest.approx(expected, rel=1e-4)
    assert logs["loss"] == pytest.approx(expected, rel=1e-4)


def test_kd_mode_none_leaves_the_core_cross_entropy_sum(batch):
    x, y = batch
    teacher = zoo.create_teacher("cifar_resnet20_v1", (8, 8, 1), 10)
    with_teacher = make_ensemble(Distillation(BITS, "none", teacher, "pretrained_external"))
    plain = make_ensemble()
    a = with_teacher.train_on_batch(x, y, return_dict=True)
    b = plain.train_on_batch(x, y, return_dict=True)
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    assert "kd_loss" not in a and "teacher_accuracy" in a


def weights_of(model):
    return [w.numpy().copy() for w in model.weights]


def changed(before, model):
    return max(float(np.abs(a - b.numpy()).max()) for a, b in zip(before, model.weights,
                                                                   strict=True))


def test_pretrained_teacher_is_frozen(batch):
    x, y = batch
    teacher = zoo.create_teacher("cifar_resnet20_v1", (8, 8, 1), 10)
    before = weights_of(teacher)
    ensemble = make_ensemble(Distillation(BITS, "simple", teacher, "pretrained_external"))
    student_before = weights_of(ensemble.model)
    ensemble.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert changed(before, teacher) == 0  # weights and BN statistics
    assert changed(student_before, ensemble.model) > 1e-4


def test_untrained_teacher_learns_with_its_own_optimizer_only(batch):
    x, y = batch
    teacher = zoo.create_teacher("cifar_resnet20_v1", (8, 8, 1), 10)
    teacher_optimizer = tf.keras.optimizers.SGD(0.05, momentum=0.9)
    distillation = Distillation(BITS, "simple", teacher, "untrained_external",
                                teacher_optimizer=teacher_optimizer)
    # the ensemble's learning rate is 0: if its optimizer touched the teacher,
    # the teacher could still move; if the teacher's touched the ensemble, it would move
    ensemble = make_ensemble(distillation, optimizer=tf.keras.optimizers.SGD(0.0))
    teacher_before, student_before = weights_of(teacher), weights_of(ensemble.model)
    kernels_before = [v.numpy().copy() for v in kernels_of(ensemble.model)]
    ensemble.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert changed(teacher_before, teacher) > 1e-4
    for before, v in zip(kernels_before, kernels_of(ensemble.model), strict=True):
        np.testing.assert_array_equal(before, v.numpy())
    assert int(teacher_optimizer.iterations) == 4 and int(ensemble.optimizer.iterations) == 4
    assert float(teacher_optimizer.learning_rate) == pytest.approx(0.05)
    teacher_vars = {id(v) for v in teacher.trainable_variables}
    student_ids = {id(getattr(v, "latent_variable", v)) for v in ensemble.model.trainable_variables}
    assert not teacher_vars & student_ids
    # the teacher's slots hold exactly the teacher's variables (momentum per variable)
    assert len(teacher_optimizer.variables()) == 1 + len(teacher.trainable_variables)
    assert changed(student_before, ensemble.model) > 0  # BN statistics of the members move


def test_loss_and_evaluation_leave_the_untrained_teacher_alone(batch):
    """Only train_step trains the teacher: computing the loss or evaluating changes nothing."""
    x, y = batch
    teacher = zoo.create_teacher("cifar_resnet20_v1", (8, 8, 1), 10)
    teacher_optimizer = tf.keras.optimizers.SGD(0.05)
    distillation = Distillation(BITS, "simple", teacher, "untrained_external",
                                teacher_optimizer=teacher_optimizer, attention_weight=0.0)
    ensemble = make_ensemble(distillation)
    ensemble.train_on_batch(x, y)  # builds the teacher's optimizer
    before, iterations = weights_of(teacher), int(teacher_optimizer.iterations)
    logits = ensemble.member_logits(x, training=True)
    total, _ = ensemble.compute_ensemble_loss(x, y, logits)
    terms = distillation.losses(logits, teacher_outputs=distillation.teacher_outputs(x))
    logs = ensemble.evaluate(x, y, verbose=0, return_dict=True)
    assert changed(before, teacher) == 0 and int(teacher_optimizer.iterations) == iterations
    # the KD term is in the loss and, in evaluation, a metric of its own
    expected = sum(float(v) for v in distillation.pair_losses(
        logits, distillation.targets(logits, teacher_outputs=distillation.teacher_outputs(x))[0]
    ).values())
    assert float(terms["kd_loss"]) == pytest.approx(expected, rel=1e-5)
    assert logs["kd_loss"] > 0 and "teacher_accuracy" in logs
    ensemble.train_on_batch(x, y)
    assert int(teacher_optimizer.iterations) == iterations + 1 and changed(before, teacher) > 0
    assert float(total) > float(sum(ensemble.member_losses(y, logits).values()))


def test_ensemble_teacher_targets_are_its_own_members(batch):
    x, y = batch
    tf.keras.utils.set_random_seed(3)
    teacher_ensemble = quantens.QuantEnsemble(tiny_model(BITS), BITS)
    teacher_ensemble.compile(optimizer=tf.keras.optimizers.SGD(0.1))
    teacher_ensemble.train_on_batch(x, y)
    distillation = Distillation(BITS, "none", teacher_ensemble.model, "ensemble")
    assert distillation.pairs == [(b, TEACHER) for b in BITS]
    student = make_ensemble(distillation)
    logits = student.member_logits(x, training=True)
    targets, _ = distillation.targets(logits, teacher_outputs=distillation.teacher_outputs(x))
    expected = teacher_ensemble.member_logits(x, training=False)
    for b in BITS:
        np.testing.assert_allclose(targets[(TEACHER, b)], expected[b], atol=1e-5)
    assert np.abs(expected[1].numpy() - expected[32].numpy()).max() > 1e-3


@pytest.mark.slow
def test_seed_example_2_with_a_local_teacher_file(tmp_path):
    data_dir = tmp_path / "imagenet1k"
    data_dir.mkdir()
    teacher_file = tmp_path / "resnet18_v1.weights.h5"
    zoo.create_teacher("ResNet18_v1", (224, 224, 3), 1000).save_weights(str(teacher_file))
    result, result_path = run_seed_example(
        2, tmp_path, eager=True, extra=("--teacher-params", str(teacher_file)),
        **{"--data-dir": str(data_dir)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(result_path / "metrics.json"))
    assert metrics["teacher_val_accuracy"] is not None
    assert "kd_loss" in (tmp_path / "work" / "test_run_2_log").read_text()


@pytest.mark.slow
def test_seed_example_2_offline_without_teacher_params_is_one_clear_error(tmp_path):
    data_dir = tmp_path / "imagenet1k"
    data_dir.mkdir()
    result, result_path = run_seed_example(2, tmp_path, **{"--data-dir": str(data_dir)})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--teacher-params" in lines[0], result.stderr[-2000:]
    assert not result_path.exists()


@pytest.mark.slow
def test_seed_example_3_trains_a_teacher_jointly(tmp_path):
    result, result_path = run_seed_example(3, tmp_path, eager=True)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(result_path / "metrics.json"))
    assert metrics["bit_widths"] == [32, 8, 4, 2] and metrics["target_bits"] == 4
    header = open(result_path / "history.csv").readline()
    assert "teacher_accuracy" in header and "kd_loss" in header


@pytest.mark.slow
def test_seed_examples_4_then_5_multi_stage_training(tmp_path):
    first, first_path = run_seed_example(4, tmp_path, eager=True)
    assert first.returncode == 0, first.stderr[-3000:]
    config = json.load(open(first_path / "config.json"))
    assert config["fp_weights"] and config["num_classes"] == 100
    assert (tmp_path / "work" / "test_run4").is_file()  # the seed's --log file
    shutil.copy(first_path / "ensemble.weights.h5", tmp_path / "work" / "first_stage.params")
    second, second_path = run_seed_example(5, tmp_path, eager=True)
    assert second.returncode == 0, second.stderr[-3000:]
    config = json.load(open(second_path / "config.json"))
    assert config["ensemble_teacher"] and config["resume"] == "first_stage.params"
    assert "kd_loss" in open(second_path / "history.csv").readline()


def test_attention_loss_equals_a_hand_computation(rng):
    from quantens.distillation import attention_loss

    student = [rng.normal(size=(3, 4, 4, 8)).astype("float32"),
               rng.normal(size=(3, 2, 2, 16)).astype("float32")]
    target = [rng.normal(size=(3, 2, 2, 5)).astype("float32"),  # another width: fine
              rng.normal(size=(3, 4, 4, 6)).astype("float32")]

    def q(f):
        a = (f ** 2).mean(-1).reshape(len(f), -1)
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    expected = (np.linalg.norm(q(student[0]) - q(target[1]), axis=-1)
                + np.linalg.norm(q(student[1]) - q(target[0]), axis=-1))
    np.testing.assert_allclose(attention_loss(student, target), expected, rtol=1e-5)


def test_stage_outputs_of_students_and_teachers():
    from quantens.distillation import stage_outputs

    student = zoo.create_model("resnet18_e1", bit_widths=(1,))
    teacher = zoo.create_teacher("ResNet18_v1", (224, 224, 3), 1000)
    for model in (student, teacher):
        assert [tuple(t.shape[1:3]) for t in stage_outputs(model)] == [
            (56, 56), (28, 28), (14, 14), (7, 7)]
    assert len(stage_outputs(tiny_model())) == 3


def test_attention_matching_joins_the_loss(batch):
    from quantens.distillation import attention_loss, with_stage_outputs

    x, y = batch
    distillation = Distillation(BITS, "progressive", None, weight=0.0, attention_weight=0.5)
    ensemble = make_ensemble(distillation, ce_weight=0.0)
    stages = with_stage_outputs(ensemble.model)
    features = {}
    for b in BITS:
        with quantens.bits(b):
            features[b] = [f.numpy() for f in stages(x, training=True)[1:]]
    expected = sum(0.5 * attention_loss(features[s], features[t]).numpy().mean()
                   for s, t in [(4, 32), (1, 4)])
    logs = ensemble.train_on_batch(x, y, return_dict=True)
    assert logs["attention_loss"] == pytest.approx(expected, rel=1e-4)
    assert logs["loss"] == pytest.approx(expected, rel=1e-4)
    assert expected > 0


# ------------------------------------------------------- recipe levers (issue 17)


def test_highest_and_average_modes_pair_every_member():
    assert kd_pairs("highest", BITS, has_teacher=False) == [(4, 32), (1, 32)]
    assert kd_pairs("highest", BITS, has_teacher=True) == [(32, TEACHER), (4, 32), (1, 32)]
    assert kd_pairs("average", BITS, has_teacher=False) == [
        (32, AVERAGE), (4, AVERAGE), (1, AVERAGE)]


def test_average_target_and_per_student_weights_and_temperatures_by_hand(rng):
    """kd = Σ_b α_b · mean_i T_b² KL(softmax(z̄/T_b) ‖ softmax(z_b/T_b)), z̄ the members' mean."""
    logits = {b: tf.constant(rng.normal(size=(6, 10)).astype("float32") * 2) for b in BITS}
    alphas, temps = {1: 2.0, 4: 0.5}, {1: 2.0}
    kd = Distillation(BITS, "average", teacher=None, weight=1.0, temperature=4.0,
                      student_weights=alphas, student_temperatures=temps)
    mean = np.mean([logits[b].numpy() for b in BITS], axis=0)
    expected = 0.0
    for b in BITS:
        t = temps.get(b, 4.0)
        p, q = softmax(mean / t), softmax(logits[b].numpy() / t)
        expected += alphas.get(b, 1.0) * np.mean(t * t * (p * (np.log(p) - np.log(q))).sum(-1))
    terms = kd.losses(logits)
    np.testing.assert_allclose(terms["kd_loss"], expected, rtol=1e-5)
    with pytest.raises(ValueError, match=r"student_weights names bit-widths \[2\] that are not"):
        Distillation(BITS, "average", student_weights={2: 1.0})
    with pytest.raises(ValueError, match=r"student_temperatures\[1\] must be a finite number > 0"):
        Distillation(BITS, "average", student_temperatures={1: 0.0})


def test_kd_warm_up_switches_on_at_its_step(batch):
    """warmup_steps=2: the KD term is 0 at optimizer steps 0 and 1, on from step 2; in
    fit, kd_loss (a running mean over the epoch) stays 0 for two batches."""
    logits = {b: tf.constant(np.eye(10, dtype="float32")[[b % 10] * 4] * b) for b in BITS}
    kd = Distillation(BITS, "progressive", teacher=None, warmup_steps=2)
    full = float(kd.losses(logits)["kd_loss"])
    assert full > 0
    assert [float(kd.losses(logits, step=tf.constant(s))["kd_loss"]) for s in (0, 1, 2, 7)] \
        == [0.0, 0.0, pytest.approx(full), pytest.approx(full)]
    x, y = batch
    ensemble = make_ensemble(Distillation(BITS, "progressive", teacher=None, warmup_steps=2))
    seen = []
    callback = tf.keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda step, logs: seen.append(logs["kd_loss"]))
    ensemble.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False, callbacks=[callback])
    assert seen[:2] == [0.0, 0.0] and seen[2] > 0 and seen[3] > seen[2] / 2


def test_member_loss_weights_scale_each_cross_entropy_in_the_total(batch):
    x, y = batch
    tf.keras.utils.set_random_seed(0)
    weights = {32: 1.0, 4: 0.5, 1: 3.0}
    ensemble = quantens.QuantEnsemble(tiny_model(BITS), BITS, member_loss_weights=weights)
    logits = ensemble.member_logits(x, training=False)
    total, losses = ensemble.compute_ensemble_loss(x, y, logits, training=False)
    by_hand = sum(w * float(np.mean(tf.keras.losses.sparse_categorical_crossentropy(
        y, logits[b], from_logits=True))) for b, w in weights.items())
    np.testing.assert_allclose(float(total), by_hand, rtol=1e-5)


def test_two_stage_trains_fp_weights_then_the_ensemble_teacher_from_it(tmp_path, tfds_dir):
    """`train.py --two-stage`: stage1 with --fp-weights, stage2 from stage1's weights with
    them as ensemble teacher (KD on: kd_loss in its history)."""
    from conftest import run_script

    result = tmp_path / "run"
    done = run_script(["train.py", "--two-stage", "--width", "8", "--epochs", "1",
                       "--test-run", "--bit-widths", "32", "1", "--no-tensorboard",
                       "--mode", "imperative",  # one step: less than tracing it, twice
                       "--data-dir", tfds_dir, "--result-path", str(result)])
    assert done.returncode == 0, done.stderr[-3000:]
    first = json.loads((result / "stage1" / "config.json").read_text())
    second = json.loads((result / "stage2" / "config.json").read_text())
    weights = str(result / "stage1" / "ensemble.weights.h5")
    assert first["fp_weights"] and not first["ensemble_teacher"] and first["kd_mode"] == "none"
    assert not second["fp_weights"] and second["ensemble_teacher"]
    assert second["teacher_params"] == second["resume"] == weights
    assert "kd_loss" in (result / "stage2" / "history.csv").read_text().splitlines()[0]
    refused = run_script(["train.py", "--two-stage", "--fp-weights", "--result-path",
                          str(tmp_path / "other")])
    assert refused.returncode == 2 and "leave out --fp-weights" in refused.stderr


# ------------------------------------------------------- every input checked (issue 23)


@pytest.fixture(scope="module")
def small_teacher():
    return tf.keras.Sequential([tf.keras.layers.Flatten(input_shape=(8, 8, 1)),
                                tf.keras.layers.Dense(10)])


def test_distillation_refuses_misuse_with_one_line_naming_the_argument(small_teacher):
    from quantens.errors import UsageError

    teacher = small_teacher
    cases = [
        ({"bit_widths": None}, ["bit_widths must list", "got None"]),
        ({"mode": "mutual"}, ["unknown mode 'mutual': choose one of none, simple, progressive"]),
        ({"mode": "simple"}, ["mode 'simple' needs a teacher", "'progressive'"]),
        ({"teacher": "resnet20"}, ["teacher must be a Keras model", "got str"]),
        ({"teacher": teacher, "teacher_mode": "frozen"}, ["unknown teacher_mode 'frozen'"]),
        ({"teacher_mode": "pretrained_external"},
         ["teacher_mode 'pretrained_external' needs a teacher model"]),
        ({"teacher": teacher, "teacher_mode": "none"},
         ["teacher_mode 'none' but a teacher model was given"]),
        ({"teacher": teacher, "teacher_mode": "untrained_external"},
         ["an untrained_external teacher needs its own optimizer", "teacher_optimizer="]),
        ({"teacher": teacher, "teacher_optimizer": tf.keras.optimizers.SGD(0.1)},
         ["teacher_optimizer would have no effect", "'pretrained_external'"]),
        ({"temperature": 0.0}, ["temperature must be a finite number > 0, got 0.0"]),
        ({"temperature": float("inf")}, ["temperature must be a finite number > 0, got inf"]),
        ({"weight": -0.5}, ["weight must be a finite number >= 0, got -0.5"]),
        ({"attention_weight": -1.0}, ["attention_weight must be a finite number >= 0"]),
        ({"teacher": teacher, "teacher_weight_decay": -1.0},
         ["teacher_weight_decay must be a finite number >= 0"]),
        ({"warmup_steps": -1}, ["warmup_steps must be a whole number >= 0", "got -1"]),
        ({"warmup_steps": 2.5}, ["warmup_steps must be a whole number >= 0", "got 2.5"]),
        ({"student_weights": [1.0]}, ["student_weights must be a dict", "got list"]),
        ({"student_weights": {2: 1.0}}, ["student_weights names bit-widths [2] that are not "
                                         "members (32 4 1)"]),
        ({"student_weights": {1: -1.0}}, ["student_weights[1] must be a finite number >= 0"]),
        ({"student_temperatures": {4: 0.0}},
         ["student_temperatures[4] must be a finite number > 0"]),
        # the highest member teaches in progressive and highest modes without a teacher
        ({"student_weights": {32: 2.0}},
         ["student_weights for 32 bits would have no effect",
          "in mode 'progressive' without a teacher the 32-bit member learns from no target",
          "(students: 4 1)"]),
        ({"mode": "highest", "student_temperatures": {32: 2.0}},
         ["student_temperatures for 32 bits would have no effect", "mode 'highest'"]),
        ({"mode": "none", "teacher": teacher, "student_weights": {1: 2.0}},
         ["student_weights for 1 bits would have no effect", "(students: none)"]),
    ]
    for changes, phrases in cases:
        kwargs = {"bit_widths": BITS, "mode": "progressive", "teacher": None, **changes}
        with pytest.raises(UsageError) as error:
            Distillation(**kwargs)
        message = str(error.value)
        assert message.startswith("Distillation: ") and "\n" not in message, message
        assert all(p in message for p in phrases), (message, phrases)
    # with a teacher, the highest member is a student too; a whole float is a step count
    kd = Distillation(BITS, "progressive", teacher, student_weights={32: 2.0}, warmup_steps=3.0)
    assert kd.student_weights == {32: 2.0} and kd.warmup_steps == 3
