"""Pretrained tags: registry, verified downloads into the cache, loading, accuracy."""

import functools
import http.server
import os
import threading

import pytest
from conftest import run_script

import zoo
from zoo import pretrained
from zoo.evaluate import evaluate_pretrained
from zoo.evaluate import main as evaluate_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAGS = [tuple(entry.split(".", 1)) for entry in pretrained.list_pretrained()]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """A private cache per test; the default base URL (the shipped files)."""
    monkeypatch.setenv("QUANTENS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("QUANTENS_WEIGHTS_URL", raising=False)
    return tmp_path / "home"


def smallest_tag():
    return min(TAGS, key=lambda t: pretrained.pretrained_config(*t).size)


def files_in(directory):
    return sorted(
        os.path.relpath(os.path.join(d, f), directory)
        for d, _, names in os.walk(directory) for f in names
    )


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _Truncating(http.server.BaseHTTPRequestHandler):
    """Announces the whole file in Content-Length, then sends half of it and closes."""

    body = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body[: len(self.body) // 2])

    def log_message(self, *args):
        pass


class Server:
    """An HTTP server on 127.0.0.1 (ephemeral port) in a thread."""

    def __init__(self, handler):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def serve(tmp_path):
    """serve(files: {name: bytes}) -> Server serving them from a folder."""
    servers = []

    def start(files, handler=None):
        folder = tmp_path / "served"
        folder.mkdir(exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        server = Server(handler or functools.partial(_Quiet, directory=str(folder)))
        servers.append(server)
        return server

    yield start
    for server in servers:
        try:
            server.stop()
        except OSError:
            pass


def shipped_bytes(config):
    with open(os.path.join(pretrained.WEIGHTS_DIR, config.file), "rb") as f:
        return f.read()


def test_registry_lists_only_tags_whose_files_ship_with_matching_sha256():
    assert ("digits_resnet_e", "digits") in TAGS
    for name, tag in TAGS:
        config = pretrained.pretrained_config(name, tag)
        path = os.path.join(pretrained.WEIGHTS_DIR, config.file)
        assert os.path.getsize(path) == config.size < 5_000_000
        assert pretrained.sha256sum(path) == config.sha256
        assert set(config.accuracy) == set(config.bit_widths)
        assert config.flags["model"] == name and config.command.startswith("python train.py")
    assert pretrained.list_pretrained("nothing*") == []


def test_download_over_http_verifies_then_loads_from_the_cache_with_the_server_stopped(
    serve, monkeypatch, home
):
    name, tag = smallest_tag()
    config = pretrained.pretrained_config(name, tag)
    server = serve({config.file: shipped_bytes(config)})
    monkeypatch.setenv("QUANTENS_WEIGHTS_URL", server.url + "/")
    assert config.url == f"{server.url}/{config.file}"

    path = pretrained.download(name, tag)
    assert path == str(home / "weights" / config.file)
    assert pretrained.sha256sum(path) == config.sha256
    assert files_in(home) == [os.path.join("weights", config.file)]  # no temporary left

    server.stop()
    model = pretrained.load_pretrained(pretrained.build_model(name, tag), name, tag)
    reference = pretrained.build_model(name, tag)
    reference.load_weights(os.path.join(pretrained.WEIGHTS_DIR, config.file))
    for mine, theirs in zip(model.get_weights(), reference.get_weights(), strict=True):
        assert (mine == theirs).all()


def test_wrong_sha256_is_a_clear_error_and_leaves_nothing_in_the_cache(
    serve, monkeypatch, home
):
    name, tag = smallest_tag()
    config = pretrained.pretrained_config(name, tag)
    data = bytearray(shipped_bytes(config))
    data[len(data) // 2] ^= 0xFF  # same size, other content
    monkeypatch.setenv("QUANTENS_WEIGHTS_URL", serve({config.file: bytes(data)}).url)
    with pytest.raises(pretrained.DownloadError, match="sha256 mismatch.*nothing was cached"):
        pretrained.download(name, tag)
    assert files_in(home) == []


def test_truncated_response_is_a_clear_error_and_leaves_nothing_in_the_cache(
    serve, monkeypatch, home
):
    name, tag = smallest_tag()
    config = pretrained.pretrained_config(name, tag)
    handler = type("Handler", (_Truncating,), {"body": shipped_bytes(config)})
    monkeypatch.setenv("QUANTENS_WEIGHTS_URL", serve({}, handler).url)
    with pytest.raises(pretrained.DownloadError, match="truncated download"):
        pretrained.download(name, tag)
    assert files_in(home) == []


def test_missing_file_on_the_server_is_a_clear_error(serve, monkeypatch, home):
    name, tag = smallest_tag()
    monkeypatch.setenv("QUANTENS_WEIGHTS_URL", serve({}).url)
    with pytest.raises(pretrained.DownloadError, match="404.*QUANTENS_WEIGHTS_URL"):
        pretrained.download(name, tag)
    assert files_in(home) == []


def test_file_url_mirror_and_a_corrupt_cached_file_is_replaced(tmp_path, monkeypatch, home):
    name, tag = smallest_tag()
    config = pretrained.pretrained_config(name, tag)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / config.file).write_bytes(shipped_bytes(config))
    monkeypatch.setenv("QUANTENS_WEIGHTS_URL", mirror.as_uri())
    assert pretrained.weights_url().startswith("file://")
    path = pretrained.download(name, tag)
    assert pretrained.sha256sum(path) == config.sha256
    with open(path, "r+b") as f:  # the cached copy gets damaged
        f.truncate(100)
    assert pretrained.sha256sum(pretrained.download(name, tag)) == config.sha256


def test_default_base_url_is_the_shipped_folder():
    assert pretrained.weights_url() == f"file://{os.path.realpath(pretrained.WEIGHTS_DIR)}"


def test_unknown_tag_lists_the_available_tags():
    with pytest.raises(pretrained.PretrainedError, match="unknown pretrained tag 'imagenet'.*digits"):
        pretrained.pretrained_config("digits_resnet_e", "imagenet")
    with pytest.raises(pretrained.PretrainedError, match="'nope'.*its tags are none"):
        zoo.create_model("resnet18_e1", input_shape=(32, 32, 3), weights="nope")
    with pytest.raises(pretrained.PretrainedError, match="no such file"):
        zoo.create_model("digits_resnet_e", weights="missing/weights.h5")


def test_a_model_of_another_architecture_is_refused_before_loading():
    name, tag = "digits_resnet_e", "digits"
    for kwargs, detail in [
        (dict(bit_widths=(32, 1)), "bit_widths"),     # Keras would load this silently
        (dict(share_bn=True), "shared"),              # this too
        (dict(activation_method="det_sign"), "input_quantizer"),  # no weights differ at all
        (dict(width=16), "filters"),
    ]:
        with pytest.raises(pretrained.PretrainedError, match=f"{detail}.*create_pretrained"):
            pretrained.load_pretrained(zoo.create_model(name, **kwargs), name, tag)


def test_create_model_with_a_tag_loads_the_pretrained_weights():
    """Needs zoo/resnet_e.py to resolve `weights` with zoo.pretrained.load_weights_into."""
    config = pretrained.pretrained_config("digits_resnet_e", "digits")
    model = zoo.create_model("digits_resnet_e", weights="digits")
    reference = pretrained.build_model("digits_resnet_e", "digits")
    reference.load_weights(os.path.join(pretrained.WEIGHTS_DIR, config.file))
    for mine, theirs in zip(model.get_weights(), reference.get_weights(), strict=True):
        assert (mine == theirs).all()
    with pytest.raises(ValueError, match="unknown pretrained tag 'cifar10'.*digits"):
        zoo.create_model("digits_resnet_e", weights="cifar10")
    # a path still works as before
    by_path = zoo.create_model("digits_resnet_e", weights=os.path.join(
        pretrained.WEIGHTS_DIR, config.file))
    for mine, theirs in zip(by_path.get_weights(), reference.get_weights(), strict=True):
        assert (mine == theirs).all()


@pytest.mark.parametrize("name, tag", TAGS, ids=[f"{n}.{t}" for n, t in TAGS])
def test_each_shipped_tag_reproduces_its_registered_accuracy_exactly(name, tag, tfds_dir):
    config = pretrained.pretrained_config(name, tag)
    measured = evaluate_pretrained(name, tag, data_dir=tfds_dir)
    assert measured == dict(config.accuracy)


@pytest.mark.slow
def test_evaluate_command_prints_the_table_and_checks_the_registry(tfds_dir, home, capsys):
    name, tag = smallest_tag()
    config = pretrained.pretrained_config(name, tag)
    result = run_script(["-m", "zoo.evaluate", name, tag, "--data-dir", tfds_dir],
                        env={"QUANTENS_HOME": str(home)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "matches the registry" in result.stdout
    for b in config.bit_widths:
        assert f"{b:>4}   {config.accuracy[b]:>10.4f}   {config.accuracy[b]:>8.4f}" in result.stdout
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main([name, "imagenet"])
    assert exit_info.value.code == 2
    assert "error: unknown pretrained tag 'imagenet'" in capsys.readouterr().err


@pytest.mark.parametrize("page", ["README.md", os.path.join("docs", "zoo.md")])
def test_docs_contain_the_generated_zoo_table(page):
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        text = f.read()
    assert pretrained.markdown_table() in text, (
        f"paste the output of `python -m zoo.pretrained --markdown` into {page}"
    )


def test_an_unwritable_cache_loads_a_shipped_tag_with_a_warning(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("QUANTENS_HOME below a file cannot be created, even by root")
    monkeypatch.setenv("QUANTENS_HOME", str(blocker / "home"))
    with pytest.warns(UserWarning, match="cannot write the weights cache.*shipped"):
        model = zoo.create_model("digits_resnet_e", weights="digits")
    reference = zoo.create_model("digits_resnet_e")
    reference.load_weights(os.path.join(pretrained.WEIGHTS_DIR,
                                        pretrained.pretrained_config("digits_resnet_e",
                                                                     "digits").file))
    for a, b in zip(model.get_weights(), reference.get_weights(), strict=True):
        assert (a == b).all()


def test_a_tag_configures_its_own_architecture(tfds_dir):
    from zoo.evaluate import evaluate

    config = pretrained.pretrained_config("digits_resnet_e", "digits_w8")
    model = zoo.create_model("digits_resnet_e", weights="digits_w8")  # no width=8 needed
    assert evaluate(model, config.bit_widths, "digits", tfds_dir) == dict(config.accuracy)
    same = zoo.create_model("digits_resnet_e", weights="digits_w8", width=8)  # agreeing: fine
    assert same.count_params() == model.count_params()
    with pytest.raises(pretrained.PretrainedError, match=r"width=16.*width=8"):
        zoo.create_model("digits_resnet_e", weights="digits_w8", width=16)
    with pytest.raises(pretrained.PretrainedError, match=r"bit_widths=\(32, 1\)"):
        zoo.create_model("digits_resnet_e", weights="digits", bit_widths=(32, 1))


@pytest.mark.parametrize("argv, phrase", [
    (["digits_resnet_e", "nosuchtag"], "unknown pretrained tag 'nosuchtag'"),
    (["digits_resnet_e", "digits", "--weights", "/nonexistent.weights.h5"], "no such file"),
])
def test_evaluate_command_bad_input_is_one_line_without_tensorflow_start_up_lines(argv, phrase):
    """No absl/oneDNN/CUDA lines of TensorFlow's start-up before the error: stderr is it."""
    result = run_script(["-m", "zoo.evaluate", *argv], timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result.stderr[-3000:]
    assert result.stderr.startswith("python -m zoo.evaluate: error: ") and phrase in result.stderr
