"""Files named from outside (a sample library entry, a sample, parameters or settings file): resolved,
kept inside their folder, read with bounds, and never echoed into a message."""

from __future__ import annotations

import os
import threading
import time

import pytest
from test_user_errors import _scan_file

from bluesky_tomo_hpc.cli.errors import EXIT_USAGE
from bluesky_tomo_hpc.cli.main import main
from bluesky_tomo_hpc.metadata.sample import (
    SampleLibrary,
    SampleMetadataError,
    load_sample_file,
    resolve_sample,
)

#: the lines of a file an attacker would like to read (an /etc/shadow look-alike outside the folder)
SECRET_LINES = ["root:$6$SECRETHASHroot:19000:0:99999:7:::", "daemon:SECRETHASHdaemon:19000:0:99999:7:::"]


@pytest.fixture
def secret(world):
    path = world.input("shadow")
    path.write_text("\n".join(SECRET_LINES) + "\n")
    return path


def _no_secret(text: str) -> None:
    assert "SECRETHASH" not in text and "root:" not in text, text


def _cli(capsys, *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.err + out.out


@pytest.mark.parametrize("target", ["secret", "outside_sample", "dotdot"])
def test_library_entry_linked_outside_its_folder_is_refused(world, secret, target):
    """A library NAME.yml linked out of its folder: refused naming the entry, never its content."""
    lib_dir = world.data / "samples"
    lib_dir.mkdir()
    outside = world.input("elsewhere.yml")
    outside.write_text("name: shadow\n")
    link = {"secret": secret, "outside_sample": outside, "dotdot": "../../elsewhere.yml"}[target]
    os.symlink(link, lib_dir / "shadow.yml")
    lib = SampleLibrary(lib_dir)
    for attempt in (lambda: lib.get("shadow"), lambda: resolve_sample("shadow", lib)):
        with pytest.raises(SampleMetadataError) as info:
            attempt()
        message = str(info.value)
        assert "shadow.yml" in message and "outside its folder" in message and "\n" not in message
        _no_secret(message)


def test_link_inside_the_library_is_followed(world):
    """A library entry linked to another file inside the same folder is read as usual."""
    lib_dir = world.data / "samples"
    lib_dir.mkdir()
    (lib_dir / "real.yml").write_text("name: alias\n")
    os.symlink("real.yml", lib_dir / "alias.yml")
    assert SampleLibrary(lib_dir).get("alias").name == "alias"


def test_sample_file_with_secret_lines_is_refused_without_them(world, secret):
    """A sample path naming a file of secrets: refused in one line naming the file, no line of it."""
    os.symlink(secret, world.data / "s.yml")
    with pytest.raises(SampleMetadataError) as info:
        resolve_sample(str(world.data / "s.yml"))
    _no_secret(str(info.value))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_sample_file_that_is_not_a_regular_file_is_refused_at_once(world, kind):
    """A FIFO, /dev/zero or a folder as a sample file: refused within a second, no hang, no read."""
    path = world.data / "odd.yml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        os.symlink("/dev/zero", path)
    else:
        path.mkdir()
    result: dict = {}

    def load() -> None:
        try:
            load_sample_file(path)
        except SampleMetadataError as exc:
            result["error"] = str(exc)

    t = threading.Thread(target=load, daemon=True)
    t0 = time.monotonic()
    t.start()
    t.join(10)
    assert not t.is_alive(), "reading the sample file hung"
    assert time.monotonic() - t0 < 5 and ("not a regular file" in result["error"]
                                          or "cannot read" in result["error"]), result


@pytest.mark.parametrize("text, words", [
    ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nname: *c\n", "aliases"),
    ("name: x\ndescription: " + "[" * 200 + "]" * 200 + "\n", "nested deeper"),
    ("name: x\n" + "\udcff", "not UTF-8"),
])
def test_hostile_yaml_is_refused_quickly(world, text, words):
    """YAML aliases (a billion laughs), 200 levels of nesting, bytes that are not UTF-8: one line."""
    path = world.data / "bomb.yml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    t0 = time.monotonic()
    with pytest.raises(SampleMetadataError, match=words) as info:
        load_sample_file(path)
    assert time.monotonic() - t0 < 10 and "\n" not in str(info.value)  # refused, not expanded


def test_params_file_of_secret_lines_is_refused_without_them(capsys, world, secret):
    """recon --params naming a file of secrets: exit 2, one line, no line of the file in it."""
    scan = _scan_file(world.input("scan.h5"))
    code, out = _cli(capsys, "recon", str(scan), "--params", str(secret),
                     "--out", str(world.data / "rec"))
    assert code == EXIT_USAGE, out
    assert len([ln for ln in out.splitlines() if ln.startswith("bluesky-tomo-hpc recon:")]) == 1
    _no_secret(out)


@pytest.mark.parametrize("content", [
    "\n".join(SECRET_LINES) + "\n",
    "tiled:\n  password: SECRETHASH-in-settings\n",
    "tiled:\n  uri: 42\n  api_key: SECRETHASH-key\n",
    "jobs:\n  ranks: SECRETHASH-ranks\n",
])
def test_settings_file_refusal_never_repeats_its_values(capsys, world, content):
    """A settings file with secrets in unknown or wrong keys: exit 2, one line, no value repeated."""
    path = world.input("settings.yml")
    path.write_text(content)
    code, out = _cli(capsys, "--config", str(path), "config")
    assert code == EXIT_USAGE, out
    _no_secret(out)
    assert "Traceback" not in out


@pytest.mark.parametrize("kind", ["fifo", "huge"])
def test_params_file_not_regular_or_too_big(capsys, world, kind):
    """A --params FIFO or a 2 MB file: exit 2 at once, one line naming the file and the problem."""
    path = world.input("params.yml")
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_text("filter_name: hann\n" + "#" * 2_000_000 + "\n")
    scan = _scan_file(world.input("scan.h5"))
    code, out = _cli(capsys, "recon", str(scan), "--params", str(path),
                     "--out", str(world.data / "rec"))
    assert code == EXIT_USAGE, out
    assert "params.yml" in out and ("regular file" in out or "bytes" in out), out
