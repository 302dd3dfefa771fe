"""The five example commands of the MXNet/BMXNet code's README, verbatim."""

EXAMPLES = {
    1: "python main.py --model resnet18_e1 --data-dir /data/imagenet1k -j 8 --initial-layers imagenet --weight-quantization dorefa --activation-method round --clip-threshold 1.3 --fp-downsample-sc --pool-downsample-sc --dataset imagenet --epochs 60 --batch-size 128 --log /test_run_1_log --log-interval 500 --gpus 0 --lr 0.002 --lr-mode cosine --bit-widths 32 8 4 2 1 --target-bits 1 --mode hybrid --optimizer radam --result_path ../test_run1/",  # noqa: E501
    2: "python main.py --model resnet18_e1 --data-dir /data/imagenet1k -j 8 --initial-layers imagenet --weight-quantization dorefa --activation-method round --clip-threshold 1.3 --fp-downsample-sc --pool-downsample-sc --dataset imagenet --epochs 60 --batch-size 128 --log test_run_2_log --log-interval 500 --gpus 0 --lr 0.002 --lr-mode cosine --bit-widths 32 8 4 2 1 --target-bits 1 --mode hybrid --optimizer radam --result_path ../test_run2/ --teacher ResNet18_v1 --kd-mode simple --kd-teacher-mode pretrained_external",  # noqa: E501
    3: "python main.py --model resnet18_e1 --weight-quantization dorefa --activation-method round --clip-threshold 1.3 --fp-downsample-sc --pool-downsample-sc --dataset cifar100 --epochs 150 --batch-size 128 --log test_run3 --log-interval 100 --gpus 0 --lr 0.01 --lr-mode cosine --bit-widths 32 8 4 2 --target-bits 4 --optimizer radam --result_path ../test_run3/ --wd 0.0001 --teacher cifar_resnet110_v2 --kd-mode progressive --kd-teacher-mode untrained_external --teacher-lr 0.1 --teacher-wd 0.0001 --teacher-lr-mode cosine --teacher-optimizer sgd",  # noqa: E501
    4: "python main.py --model resnet18_e1 --weight-quantization dorefa --activation-method round --clip-threshold 1.3 --fp-downsample-sc --pool-downsample-sc --dataset cifar100 --epochs 150 --batch-size 128 --log test_run4 --log-interval 100 --gpus 0 --lr 0.01 --lr-mode cosine --bit-widths 32 8 4 2 1 --target-bits 1 --optimizer radam --result_path ../test_run4/ --fp-weights",  # noqa: E501
    5: "python main.py --model resnet18_e1 --weight-quantization dorefa --activation-method round --clip-threshold 1.3 --fp-downsample-sc --pool-downsample-sc --dataset cifar100 --epochs 150 --batch-size 128 --log test_run5 --log-interval 100 --gpus 0 --lr 0.01 --lr-mode cosine --bit-widths 32 8 4 2 1 --target-bits 1 --optimizer radam --result_path ../test_run5/ --ensemble-teacher --resume first_stage.params --teacher-params first_stage.params",  # noqa: E501
}


def flags(n: int, **replace) -> list[str]:
    """Example n's flags (without `python main.py`), adapted for a CPU test run.

    `replace` maps a flag to a new value (None drops the flag and its value);
    `--gpus 0` is always dropped (CI has no GPU).
    """
    import shlex

    words = shlex.split(EXAMPLES[n])[2:]
    replace = {"--gpus": None, **replace}
    out, i = [], 0
    while i < len(words):
        word = words[i]
        takes_value = i + 1 < len(words) and not words[i + 1].startswith("--")
        if word in replace:
            if replace[word] is not None:
                out += [word, *str(replace[word]).split()]
            i += 2 if takes_value else 1
            # multi-value flags (--bit-widths) keep their extra values out
            while word in replace and i < len(words) and not words[i].startswith("-"):
                i += 1
            continue
        out.append(word)
        i += 1
    return out
