"""Checkpoint files (gpunet.io): untrusted files run no code, saves survive SIGKILL,
bad bytes raise CheckpointError and nothing else, failed saves name their target,
PyTorch files are named as such, and saved files get the umask's mode."""
import contextlib
import errno
import io
import json
import os
import pathlib
import pickle
import re
import signal
import stat
import subprocess
import sys
import time
import zipfile

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpunet
from gpunet import CheckpointError, nn, optim

from .helpers import tiny_model

PACKAGE = pathlib.Path(gpunet.__file__).parent


def small_model():
    gpunet.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "good.npz"
    model = small_model()
    opt = optim.Adam(model.parameters(), 0.1)
    for p in model.parameters():
        p.grad += 0.5
    opt.step()
    gpunet.save(path, model, opt, epoch=1)
    return path.read_bytes()


def npy(array_bytes_header: dict, data: bytes) -> bytes:
    """A .npy member with a hand-written header."""
    header = repr(array_bytes_header).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


def zip_of(members: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buffer.getvalue()


def load_bytes(tmp_path, data: bytes):
    path = tmp_path / "ck.npz"
    path.write_bytes(data)
    return gpunet.io.read_checkpoint(path)


class Gadget:
    def __reduce__(self):
        return (os.system, ("touch /tmp/gpunet-gadget-ran",))


@pytest.mark.parametrize("name,members,match", [
    ("pickle gadget", {"model/0.weight.npy": pickle.dumps(Gadget())}, "not a readable|magic"),
    ("object array", {"model/0.weight.npy": npy(
        {"descr": "|O", "fortran_order": False, "shape": (1,)}, pickle.dumps([Gadget()]))},
     "object arrays are refused"),
    ("absurd shape", {"model/0.weight.npy": npy(
        {"descr": "<f4", "fortran_order": False, "shape": (2**40,)}, b"\x00" * 16)},
     r"shape \(1099511627776,\).*16 bytes"),
    ("malformed header", {"model/0.weight.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': <f4}\n"},
     "not a readable"),
    ("negative shape", {"model/0.weight.npy": npy(
        {"descr": "<f4", "fortran_order": False, "shape": (-4,)}, b"\x00" * 16)},
     "not a readable|malformed shape"),
    ("no meta", {"model/0.weight.npy": npy(
        {"descr": "<f4", "fortran_order": False, "shape": (4,)}, b"\x00" * 16)}, "no __meta__"),
    ("not npy", {"evil.sh": b"rm -rf /"}, "unexpected member"),
])
def test_crafted_checkpoints_are_refused(tmp_path, name, members, match):
    with pytest.raises(CheckpointError, match=match):
        load_bytes(tmp_path, zip_of(members))
    assert not os.path.exists("/tmp/gpunet-gadget-ran")


def test_duplicate_members_and_overlong_members(tmp_path):
    data = npy({"descr": "<f4", "fortran_order": False, "shape": (4,)}, b"\x00" * 16)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z, pytest.warns(UserWarning):
        z.writestr("model/a.npy", data)
        z.writestr("model/a.npy", data)
    with pytest.raises(CheckpointError, match="duplicate member"):
        load_bytes(tmp_path, buffer.getvalue())
    # a member with more data than its header declares
    longer = npy({"descr": "<f4", "fortran_order": False, "shape": (2,)}, b"\x00" * 16)
    with pytest.raises(CheckpointError, match=r"8 bytes\) but the member holds 16"):
        load_bytes(tmp_path, zip_of({"model/a.npy": longer}))


def _central_entries(blob: bytes):
    """Offsets of the zip central-directory records."""
    i = blob.find(b"PK\x01\x02")
    while i != -1:
        yield i
        i = blob.find(b"PK\x01\x02", i + 4)


def test_overlapping_offsets_and_understated_sizes(tmp_path, good_bytes):
    entries = list(_central_entries(good_bytes))
    first_offset = good_bytes[entries[0] + 42:entries[0] + 46]
    overlap = bytearray(good_bytes)  # the second entry points at the first one's data
    overlap[entries[1] + 42:entries[1] + 46] = first_offset
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_bytes(tmp_path, bytes(overlap))
    shrunk = bytearray(good_bytes)  # a member larger than its declared size
    size = int.from_bytes(good_bytes[entries[0] + 24:entries[0] + 28], "little")
    shrunk[entries[0] + 24:entries[0] + 28] = (size - 8).to_bytes(4, "little")
    with pytest.raises(CheckpointError):
        load_bytes(tmp_path, bytes(shrunk))


def test_a_good_checkpoint_round_trips(tmp_path, good_bytes):
    header, arrays = load_bytes(tmp_path, good_bytes)
    assert header["meta"] == {"epoch": 1} and "model/0.weight" in arrays


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_fuzzed_checkpoints_load_identically_or_raise_checkpoint_error(tmp_path_factory,
                                                                        good_bytes, data):
    """Truncation, byte flips and random blobs: the same arrays, or CheckpointError."""
    kind = data.draw(st.sampled_from(["truncate", "flip", "blob"]))
    if kind == "truncate":
        blob = good_bytes[:data.draw(st.integers(0, len(good_bytes) - 1))]
    elif kind == "flip":
        blob = bytearray(good_bytes)
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] ^= data.draw(st.integers(1, 255))
        blob = bytes(blob)
    else:
        blob = data.draw(st.binary(max_size=4096))
    tmp = tmp_path_factory.mktemp("fuzz")
    _, reference = load_bytes(tmp, good_bytes)
    try:
        _, arrays = load_bytes(tmp, blob)
    except CheckpointError:
        return
    assert arrays.keys() == reference.keys()
    assert all(numpy.array_equal(arrays[k], reference[k]) for k in arrays)


def test_every_truncation_is_refused(tmp_path, good_bytes):
    for cut in range(0, len(good_bytes), max(1, len(good_bytes) // 300)):
        with pytest.raises(CheckpointError):
            load_bytes(tmp_path, good_bytes[:cut])


def test_no_pickle_in_the_package():
    """No module imports pickle (or shelve, dill, joblib) but the CIFAR-10 reader,
    whose unpickler allows only NumPy's array reconstruction; no allow_pickle=True;
    every np.load passes allow_pickle=False."""
    imports = re.compile(r"^\s*(import|from)\s+(pickle|cPickle|_pickle|shelve|dill|joblib)\b",
                         re.MULTILINE)
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"allow_pickle\s*=\s*True", text), path
        for call in re.findall(r"(?:numpy|np)\.load\([^)]*\)", text):
            assert "allow_pickle=False" in call, (path, call)
        if path.name == "cifar.py":
            assert "class _ArrayOnlyUnpickler(pickle.Unpickler)" in text
            assert "def find_class" in text and not re.search(r"pickle\.loads?\(", text)
        else:
            assert not imports.search(text), f"{path} imports a pickle-like module"


# One process imports gpunet once and forks a saver per kill (milliseconds, where a
# fresh interpreter costs most of a second). Each saver writes version 1 whole, then
# saves versions 2, 3, ... : at a named moment of the second save it says "at" and
# waits there for the SIGKILL; with "anytime" it saves on until the kill comes.
FORK_SAVER = """
import os, sys, time, numpy, gpunet
from gpunet import nn
gpunet.set_device("cpu")
model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
path = sys.argv[1]


def wait_for_the_kill():
    print("at", flush=True)
    while True:
        time.sleep(60)


def saver(moment):
    state = {"version": 0, "arrays": 0}
    write_array, replace = numpy.lib.format.write_array, os.replace

    def write_array_hook(*args, **kwargs):  # half of the temporary file written
        state["arrays"] += 1
        if moment == "mid-write" and state["version"] == 2 and state["arrays"] == 3:
            wait_for_the_kill()
        return write_array(*args, **kwargs)

    def replace_hook(src, dst):
        if moment == "before-rename" and state["version"] == 2:
            wait_for_the_kill()
        replace(src, dst)
        if moment == "after-rename" and state["version"] == 2:  # folder not yet fsynced
            wait_for_the_kill()

    numpy.lib.format.write_array, os.replace = write_array_hook, replace_hook
    while True:
        state["version"] += 1
        state["arrays"] = 0
        for p in model.parameters():
            p.data[...] = state["version"]
        gpunet.save(path, model, version=state["version"])
        print(state["version"], flush=True)


for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        try:
            saver(line.strip())
        finally:
            os._exit(1)
    print("pid", pid, flush=True)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""

# the version each moment must leave: the old file until the rename, the new one after
MOMENTS = {"mid-write": 1, "before-rename": 1, "after-rename": 2}


def test_sigkill_during_saves_never_leaves_a_mix(tmp_path):
    """SIGKILL at the three moments that matter (temporary file half written, whole
    but not renamed, renamed but the folder not fsynced), then at seeded random
    times: the checkpoint is always one whole version, never a mix."""
    path = tmp_path / "ck.npz"
    rng = numpy.random.default_rng(0)
    server = subprocess.Popen([sys.executable, "-c", FORK_SAVER, str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    seen, pid = set(), None
    try:
        for moment in [*MOMENTS, *["anytime"] * 8]:
            server.stdin.write(moment + "\n")
            server.stdin.flush()
            pid = int(server.stdout.readline().split()[1])
            assert server.stdout.readline().strip() == "1"  # one complete save exists
            if moment == "anytime":
                time.sleep(float(rng.uniform(0, 0.05)))
            else:
                assert server.stdout.readline().strip() == "at", moment
            os.kill(pid, signal.SIGKILL)
            while (line := server.stdout.readline().strip()) != "reaped":
                assert line.isdigit(), line  # versions saved before the kill
            pid = None
            header, arrays = gpunet.io.read_checkpoint(path)
            version = header["meta"]["version"]
            seen.add(version)
            if moment in MOMENTS:
                assert version == MOMENTS[moment], moment
            for name, array in arrays.items():
                assert (array == version).all(), f"{name} mixes versions (meta says {version})"
    finally:
        if pid is not None:  # a failed check: the saver may still run (not yet reaped)
            with contextlib.suppress(ProcessLookupError):  # keep the failure's own message
                os.kill(pid, signal.SIGKILL)
        server.stdin.close()
        server.wait(timeout=30)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "ck.npz"]
    assert leftovers and all(name.startswith(".tmp-") for name in leftovers)
    assert len(seen) > 1


def test_checksum_names_flipped_and_truncated_data(tmp_path, good_bytes):
    with zipfile.ZipFile(io.BytesIO(good_bytes)) as z:
        members = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(numpy.lib.format.read_array(io.BytesIO(members["__meta__.npy"])).tobytes())
    arr = numpy.lib.format.read_array(io.BytesIO(members["model/0.weight.npy"]))
    buf = io.BytesIO()
    numpy.lib.format.write_array(buf, arr + 1)
    members["model/0.weight.npy"] = buf.getvalue()
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_bytes(tmp_path, zip_of(members))
    assert meta["format"] == gpunet.io.FORMAT


def test_pytorch_files_are_named_as_such(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "weights.pth"
    torch.save(torch.nn.Linear(2, 3).state_dict(), path)
    with pytest.raises(CheckpointError, match="a PyTorch file .torch.save."):
        gpunet.load(path, tiny_model())
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer, _use_new_zipfile_serialization=False)
    (tmp_path / "legacy.pt").write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="a PyTorch file"):
        gpunet.load(tmp_path / "legacy.pt", tiny_model())


def test_checkpoints_get_the_umasks_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = gpunet.save(tmp_path / "ckpt.npz", tiny_model())
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_save_errors_name_the_target_not_the_temporary_file(tmp_path, monkeypatch):
    model = nn.Sequential(nn.Linear(2, 2))
    path = tmp_path / "model.npz"

    def full(file, *args, **kwds):
        raise OSError(errno.ENOSPC, "No space left on device", file.name)

    monkeypatch.setattr(numpy, "savez", full)
    with pytest.raises(OSError, match=f"cannot save {path}: No space left on device; "
                                      f"nothing was written to {path}") as caught:
        gpunet.save(path, model)
    assert caught.value.errno == errno.ENOSPC and ".tmp-" not in str(caught.value)
    assert os.listdir(tmp_path) == []
