"""Dataset loading: IDX parsing and its errors, the search order, verified
downloads from a local HTTP server, CIFAR-10, splits, batches, transforms."""
import gzip
import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading

import numpy
import pytest

import gpunet
from gpunet.data import (
    DatasetError,
    cifar,
    datasets,
    load_cifar10,
    load_fashion_mnist,
    minibatches,
    parse_idx,
    read_idx,
    train_dev_test_split,
    transforms,
)

from .helpers import idx_images, idx_labels


def idx_bytes(array, type_code=0x08):
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx_set(folder, n_train=12, n_test=5, gz=True, labels_max=9):
    """A tiny MNIST-like set in ``folder``; returns the arrays."""
    os.makedirs(folder, exist_ok=True)
    rng = numpy.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype="u1"),
              "train-labels-idx1-ubyte": rng.integers(0, labels_max + 1, n_train, dtype="u1"),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype="u1"),
              "t10k-labels-idx1-ubyte": rng.integers(0, labels_max + 1, n_test, dtype="u1")}
    for name, a in arrays.items():
        data = idx_bytes(a)
        if gz:
            with gzip.open(os.path.join(folder, name + ".gz"), "wb") as f:
                f.write(data)
        else:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)
    return arrays


@pytest.fixture
def tiny_dataset(monkeypatch, tmp_path):
    """An IdxDataset whose SHA-256s are those of the tiny files, with the search
    path isolated from the machine's real caches."""
    arrays = write_idx_set(tmp_path / "src")
    resources = [datasets.Resource(name, hashlib.sha256(idx_bytes(a)).hexdigest())
                 for name, a in arrays.items()]
    tiny = datasets.IdxDataset("tiny", ("http://127.0.0.1:9/",), *resources)
    monkeypatch.setenv("GPUNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GPUNET_DATA", raising=False)
    monkeypatch.delenv("GPUNET_MIRROR", raising=False)
    monkeypatch.setattr(datasets, "DEBIAN_ROOT", str(tmp_path / "debian"))
    return tiny, arrays, tmp_path


def test_parse_idx_round_trip():
    a = numpy.arange(24, dtype="u1").reshape(2, 3, 4)
    assert numpy.array_equal(parse_idx(idx_bytes(a)), a)
    b = numpy.arange(6, dtype=">i4").reshape(2, 3) - 3
    assert numpy.array_equal(parse_idx(idx_bytes(b, 0x0C)), b)


@pytest.mark.parametrize("data,match", [
    (b"\x00\x01\x08\x01" + b"\x00\x00\x00\x02xx", "bad magic"),
    (b"\x00\x00\x07\x01" + b"\x00\x00\x00\x02xx", "bad magic"),
    (b"", "bad magic"),
    (b"\x00\x00\x08\x03\x00\x00", "header is truncated"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", "wrong size.*\\(5,\\)"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x02abc", "wrong size"),
])
def test_malformed_idx_names_the_file_and_problem(data, match):
    with pytest.raises(DatasetError, match=match) as info:
        parse_idx(data, "some/file-idx1-ubyte")
    assert "some/file-idx1-ubyte" in str(info.value)


def test_truncated_gzip_is_a_dataset_error(tmp_path):
    good = gzip.compress(idx_bytes(numpy.zeros((50, 28, 28), "u1")))
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError, match="x-idx3-ubyte.gz"):
        read_idx(path)


def test_search_order_root_then_env_then_cache_then_debian(tiny_dataset, monkeypatch):
    tiny, arrays, tmp = tiny_dataset
    for folder in ("debian/tiny", "cache/tiny", "env/tiny", "root"):
        write_idx_set(tmp / folder, gz=folder != "env/tiny")
    monkeypatch.setenv("GPUNET_DATA", str(tmp / "env"))
    expected = [str(tmp / "root"), str(tmp / "env/tiny"), str(tmp / "cache/tiny"),
                str(tmp / "debian/tiny")]
    assert datasets.search_folders("tiny", tmp / "root") == expected
    assert datasets._locate(tiny, tmp / "root")[0].startswith(str(tmp / "root"))
    assert datasets._locate(tiny, None)[0] == str(tmp / "env/tiny/train-images-idx3-ubyte")
    monkeypatch.delenv("GPUNET_DATA")
    assert datasets._locate(tiny, None)[0].startswith(str(tmp / "cache/tiny"))
    (x, y), (xt, yt) = datasets.load_idx_dataset(tiny)
    assert x.shape == (12, 1, 28, 28) and x.dtype == numpy.uint8 and y.dtype == numpy.int64
    assert numpy.array_equal(x[:, 0], arrays["train-images-idx3-ubyte"])
    assert xt.shape == (5, 1, 28, 28)


def test_checksum_mismatch_and_bad_labels_name_the_file(tiny_dataset):
    tiny, arrays, tmp = tiny_dataset
    write_idx_set(tmp / "root", labels_max=9)
    bad = datasets.IdxDataset("tiny", tiny.mirrors, tiny.train_images,
                              datasets.Resource("train-labels-idx1-ubyte", "0" * 64),
                              tiny.test_images, tiny.test_labels)
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.gz: checksum mismatch"):
        datasets.load_idx_dataset(bad, tmp / "root")
    write_idx_set(tmp / "wide", labels_max=12)
    unchecked = datasets.IdxDataset("tiny", (), *(datasets.Resource(r.filename)
                                                  for r in tiny.resources))
    if int(read_idx(tmp / "wide/train-labels-idx1-ubyte.gz").max()) >= 10:
        with pytest.raises(DatasetError, match="out of range"):
            datasets.load_idx_dataset(unchecked, tmp / "wide")


class _Server:
    """A static file server on 127.0.0.1 for one test; counts requests."""

    def __init__(self, folder):
        self.requests = 0
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(folder), **kwargs)

            def do_GET(self):
                server.requests += 1
                super().do_GET()

            def log_message(self, *args):  # keep the test output quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_from_a_local_mirror_is_verified_and_atomic(tiny_dataset, monkeypatch):
    tiny, arrays, tmp = tiny_dataset
    with _Server(tmp / "src") as server:
        monkeypatch.setenv("GPUNET_MIRROR", server.url)
        (x, y), _ = datasets.load_idx_dataset(tiny)
    assert numpy.array_equal(y, arrays["train-labels-idx1-ubyte"])
    cached = sorted(os.listdir(tmp / "cache/tiny"))
    assert cached == sorted(name + ".gz" for name in arrays)  # no temporary files left


def test_download_with_wrong_checksum_leaves_nothing(tiny_dataset, monkeypatch):
    tiny, arrays, tmp = tiny_dataset
    wrong = datasets.IdxDataset("tiny", (), *(datasets.Resource(r.filename, gz_md5="0" * 32)
                                              for r in tiny.resources))
    with _Server(tmp / "src") as server:
        monkeypatch.setenv("GPUNET_MIRROR", server.url)
        with pytest.raises(DatasetError, match="checksum mismatch.*MD5"):
            datasets.load_idx_dataset(wrong)
    assert os.listdir(tmp / "cache/tiny") == []


def test_unreachable_mirror_says_where_it_looked(tiny_dataset, monkeypatch):
    tiny, _, tmp = tiny_dataset
    with _Server(tmp / "empty-mirror") as server:
        monkeypatch.setenv("GPUNET_MIRROR", server.url)
        with pytest.raises(DatasetError, match="not found in .*download failed.*404"):
            datasets.load_idx_dataset(tiny)


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_debian(monkeypatch, tmp_path):
    monkeypatch.setenv("GPUNET_CACHE", str(tmp_path))
    monkeypatch.delenv("GPUNET_DATA", raising=False)
    (x, y), (xt, yt) = load_fashion_mnist()
    assert x.shape == (60000, 1, 28, 28) and xt.shape == (10000, 1, 28, 28)
    assert numpy.bincount(y).tolist() == [6000] * 10
    assert numpy.bincount(yt).tolist() == [1000] * 10


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_is_not_taken_for_mnist():
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz: this is fashion-mnist's "
                                           "train-images-idx3-ubyte .*not mnist's"):
        gpunet.data.load_mnist("/usr/share/datasets/fashion-mnist", split="train")


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def _pair_of_known_datasets(monkeypatch, tiny_dataset):
    """Like Fashion-MNIST and MNIST: ``fashion`` has the tiny files' SHA-256s, ``mnist``
    the MD5s of their .gz only (of the files in ``src``, as written); both known."""
    tiny, _, tmp = tiny_dataset
    fashion = datasets.IdxDataset("fashion-like", (), *tiny.resources)
    mnist = datasets.IdxDataset("mnist-like", (), *(
        datasets.Resource(r.filename, gz_md5=_md5(tmp / "src" / (r.filename + ".gz")))
        for r in tiny.resources))
    monkeypatch.setattr(datasets, "KNOWN_DATASETS", (fashion, mnist))
    return fashion, mnist, tmp / "src"


def test_a_found_mnist_gz_gzipped_again_loads(monkeypatch, tiny_dataset):
    """A copy gzipped again (Debian re-gzips its dataset packages) has another .gz MD5
    than the official download's: found on disk it loads, as before."""
    _, mnist, src = _pair_of_known_datasets(monkeypatch, tiny_dataset)
    monkeypatch.setattr(datasets, "KNOWN_DATASETS", (mnist,))  # its files are fashion's too
    name = "t10k-labels-idx1-ubyte"
    data = read_idx(src / f"{name}.gz")
    (src / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(data), mtime=1))
    assert _md5(src / f"{name}.gz") != mnist.test_labels.gz_md5
    assert numpy.array_equal(datasets.load_idx_dataset(mnist, src)[1][1], data)


def test_a_file_of_another_known_dataset_is_refused_naming_it(monkeypatch, tiny_dataset):
    """Files with no digest to check (here decompressed "MNIST") are still refused when
    they are a known file of another dataset; a mismatch names the file it is."""
    fashion, mnist, src = _pair_of_known_datasets(monkeypatch, tiny_dataset)
    write_idx_set(src.parent / "plain", gz=False)  # the same data as src, decompressed
    with pytest.raises(DatasetError, match=r"plain/train-images-idx3-ubyte: this is "
                                           r"fashion-like's train-images-idx3-ubyte \(by the "
                                           r"SHA-256 of its bytes\), not mnist-like's"):
        datasets.load_idx_dataset(mnist, src.parent / "plain")
    unknown_sha = datasets.IdxDataset("other", (), datasets.Resource(
        "train-images-idx3-ubyte", "0" * 64), *fashion.resources[1:])
    with pytest.raises(DatasetError, match="checksum mismatch.*; it is fashion-like's "
                                           "train-images-idx3-ubyte$"):
        datasets.load_idx_dataset(unknown_sha, src)  # found by its SHA-256


# -- CIFAR-10 --------------------------------------------------------------------------------
def _cifar_batches(rng, n=4):
    return {name: (rng.integers(0, 256, (n, 3072), dtype="u1"), rng.integers(0, 10, n))
            for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                         "data_batch_5", "test_batch"]}


def test_cifar10_binary_and_python_batches_agree(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUNET_CACHE", str(tmp_path / "cache"))
    batches = _cifar_batches(numpy.random.default_rng(1))
    binary, python = tmp_path / "bin/cifar-10-batches-bin", tmp_path / "py/cifar-10-batches-py"
    binary.mkdir(parents=True)
    python.mkdir(parents=True)
    for name, (data, labels) in batches.items():
        records = numpy.concatenate([labels[:, None].astype("u1"), data], axis=1)
        (binary / f"{name}.bin").write_bytes(records.tobytes())
        (python / name).write_bytes(pickle.dumps(
            {b"batch_label": b"x", b"labels": labels.tolist(), b"data": data,
             b"filenames": [b"a"] * len(labels)}, protocol=2))
    a = load_cifar10(tmp_path / "bin")
    b = load_cifar10(tmp_path / "py")
    for (xa, ya), (xb, yb) in zip(a, b):
        assert numpy.array_equal(xa, xb) and numpy.array_equal(ya, yb)
    (x, y), (xt, yt) = a
    assert x.shape == (20, 3, 32, 32) and xt.shape == (4, 3, 32, 32) and y.dtype == numpy.int64
    assert numpy.array_equal(x[0].reshape(-1), batches["data_batch_1"][0][0])


class _Gadget:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/gpunet-pwned",))


def test_cifar10_python_batch_cannot_run_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    good = pickle.dumps({b"data": numpy.zeros((1, 3072), "u1"), b"labels": [0]})
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(good)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": _Gadget(), b"labels": [0]}))
    with pytest.raises(DatasetError, match="data_batch_3.*posix.system|data_batch_3.*not allowed"):
        load_cifar10(tmp_path)
    assert not os.path.exists("/tmp/gpunet-pwned")


def test_cifar10_wrong_binary_size(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / f"{name}.bin").write_bytes(b"\x00" * 3073)
    (folder / "test_batch.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(DatasetError, match="test_batch.bin: wrong size"):
        load_cifar10(tmp_path)


def _fake_cifar_archive(folder, batches, extra=()):
    """A small cifar-10-python.tar.gz in ``folder``, laid out as the real one (python
    batches under cifar-10-batches-py/, plus batches.meta and ``extra`` members);
    returns its SHA-256."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cifar-10-python.tar.gz"
    members = {name: pickle.dumps({b"batch_label": name.encode(), b"labels": labels.tolist(),
                                   b"data": data, b"filenames": [b"a"] * len(labels)},
                                  protocol=2) for name, (data, labels) in batches.items()}
    members["batches.meta"] = pickle.dumps({b"label_names": [b"airplane"] * 10}, protocol=2)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in [*(("cifar-10-batches-py/" + k, v) for k, v in members.items()),
                           *extra]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cifar_cache(monkeypatch, tmp_path):
    """The search path isolated from the machine's real data and caches."""
    monkeypatch.setenv("GPUNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GPUNET_DATA", raising=False)
    monkeypatch.delenv("GPUNET_MIRROR", raising=False)
    monkeypatch.setattr(datasets, "DEBIAN_ROOT", str(tmp_path / "debian"))
    return tmp_path


def test_cifar10_download_from_a_local_mirror_is_verified_unpacked_and_cached(
        cifar_cache, monkeypatch):
    """The archive comes from $GPUNET_MIRROR (a server on 127.0.0.1), is checked
    against the SHA-256 passed in, unpacked into the cache (the archive removed, no
    temporary files left) and found there next time without a request. A member
    outside cifar-10-batches-py/ (../evil) is never written anywhere."""
    batches = _cifar_batches(numpy.random.default_rng(5))
    digest = _fake_cifar_archive(cifar_cache / "mirror", batches,
                                 extra=[("../evil", b"x"), ("/tmp/gpunet-evil", b"x")])
    archive = cifar.Archive("cifar-10-python.tar.gz", digest, ("http://127.0.0.1:9/",))
    with _Server(cifar_cache / "mirror") as server:
        monkeypatch.setenv("GPUNET_MIRROR", server.url)
        (x, y), (xt, yt) = load_cifar10(archive=archive)
        assert server.requests == 1
        assert numpy.array_equal(load_cifar10(split="test", archive=archive)[1], yt)
        assert server.requests == 1  # the second call read the cache
    assert x.shape == (20, 3, 32, 32) and xt.shape == (4, 3, 32, 32)
    assert numpy.array_equal(x[4:8].reshape(4, -1), batches["data_batch_2"][0])
    assert numpy.array_equal(yt, batches["test_batch"][1])
    assert os.listdir(cifar_cache / "cache/cifar10") == ["cifar-10-batches-py"]
    assert sorted(os.listdir(cifar_cache / "cache/cifar10/cifar-10-batches-py")) == sorted(
        batches)
    assert not (cifar_cache / "cache/evil").exists() and not (cifar_cache / "evil").exists()
    assert not os.path.exists("/tmp/gpunet-evil")


def test_cifar10_real_checksum_is_the_official_archive():
    assert cifar.CIFAR10_ARCHIVE.filename == "cifar-10-python.tar.gz"
    assert cifar.CIFAR10_ARCHIVE.sha256 == (
        "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce")


@pytest.mark.parametrize("corruption", ["checksum", "truncated", "missing batch"])
def test_cifar10_corrupt_download_is_refused_and_leaves_nothing(cifar_cache, monkeypatch,
                                                                 corruption):
    """A wrong SHA-256 is refused before unpacking; an archive whose checksum matches
    but which is truncated or lacks a batch is refused while unpacking. Either way the
    cache folder is left empty: no archive, no batches, no temporary files."""
    batches = _cifar_batches(numpy.random.default_rng(6))
    if corruption == "missing batch":
        del batches["data_batch_4"]
    digest = _fake_cifar_archive(cifar_cache / "mirror", batches)
    path = cifar_cache / "mirror/cifar-10-python.tar.gz"
    if corruption == "truncated":
        path.write_bytes(path.read_bytes()[:-200])
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if corruption == "checksum":
        digest = "0" * 64
    archive = cifar.Archive("cifar-10-python.tar.gz", digest, ())
    match = {"checksum": "checksum mismatch.*SHA-256 [0-9a-f]{64}, expected 0{64}",
             "truncated": "not a readable tar.gz",
             "missing batch": "has no cifar-10-batches-py/data_batch_4"}[corruption]
    with _Server(cifar_cache / "mirror") as server:
        monkeypatch.setenv("GPUNET_MIRROR", server.url)
        with pytest.raises(DatasetError, match=match):
            load_cifar10(archive=archive)
    assert os.listdir(cifar_cache / "cache/cifar10") == []


def test_cifar10_not_found_says_where_to_put_it(cifar_cache, monkeypatch, tmp_path):
    """Nothing found and the mirror has no archive (404): the error lists where it
    looked, why the download failed, and names $GPUNET_DATA and --data-root; an
    explicit root that lacks the batches says the same, without downloading."""
    (tmp_path / "empty-mirror").mkdir()
    with _Server(tmp_path / "empty-mirror") as server:
        monkeypatch.setenv("GPUNET_MIRROR", server.url)
        with pytest.raises(DatasetError) as error:
            load_cifar10()
        assert server.requests == 1
        message = str(error.value)
        assert "cache/cifar10" in message and "download failed" in message and "404" in message
        assert "$GPUNET_DATA" in message and "--data-root" in message
        with pytest.raises(DatasetError, match=r"no CIFAR-10 batches.*\$GPUNET_DATA.*--data-root"):
            load_cifar10(tmp_path / "empty-mirror")
        assert server.requests == 1  # an explicit root is never downloaded into


# -- splits, batches, transforms ------------------------------------------------------------
def test_train_dev_test_split():
    x, y = numpy.arange(1000).reshape(-1, 1), numpy.arange(1000)
    (xa, ya), (xb, yb), (xc, yc) = train_dev_test_split(x, y)
    assert (len(xa), len(xb), len(xc)) == (980, 10, 10)
    assert sorted(numpy.concatenate([ya, yb, yc]).tolist()) == list(range(1000))
    assert numpy.array_equal(xa[:, 0], ya)
    again = train_dev_test_split(x, y)
    assert numpy.array_equal(again[1][1], yb)
    with pytest.raises(ValueError, match="fractions"):
        train_dev_test_split(x, y, (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="same length"):
        train_dev_test_split(x, y[:5])


def test_minibatches_seeded_and_keep_the_last_partial_batch():
    x, y = numpy.arange(10).reshape(-1, 1), numpy.arange(10)
    batches = list(minibatches(x, y, 4, seed=3))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    assert sorted(numpy.concatenate([b[1] for b in batches]).tolist()) == list(range(10))
    assert all(numpy.array_equal(b[0][:, 0], b[1]) for b in batches)
    again = list(minibatches(x, y, 4, seed=3))
    assert all(numpy.array_equal(a[1], b[1]) for a, b in zip(batches, again))
    ordered = list(minibatches(x, y, 4, shuffle=False))
    assert ordered[0][1].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="batch_size"):
        list(minibatches(x, y, 0))


def test_transforms():
    x = numpy.arange(2 * 3 * 4 * 4, dtype="u1").reshape(2, 3, 4, 4)
    f = transforms.to_float(x)
    assert f.dtype == numpy.float32 and f.max() == pytest.approx(95 / 255)
    std = transforms.Standardize().fit(f)
    z = std(f)
    assert numpy.allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-6)
    assert numpy.allclose(z.std(axis=(0, 2, 3)), 1, atol=1e-5)
    gpunet.manual_seed(0)
    crop = transforms.random_crop(f, 4, padding=2)
    assert crop.shape == f.shape
    # each crop is a window of the padded image
    padded = numpy.pad(f, ((0, 0), (0, 0), (2, 2), (2, 2)))
    for i in range(2):
        hits = [(r, c) for r in range(5) for c in range(5)
                if numpy.array_equal(padded[i, :, r:r + 4, c:c + 4], crop[i])]
        assert hits
    flipped = transforms.horizontal_flip(f, p=1.0)
    assert numpy.array_equal(flipped, f[..., ::-1])
    assert numpy.array_equal(transforms.horizontal_flip(f, p=0.0), f)
    assert transforms.augment(f).shape == f.shape
    with pytest.raises(ValueError, match="exceeds"):
        transforms.random_crop(f, 9, padding=2)


def _windows_of(padded, crops):
    """For each crop, the (top, left) offsets at which it is a window of ``padded``."""
    h, w = crops.shape[-2:]
    return [[(r, c) for r in range(padded.shape[2] - h + 1) for c in range(padded.shape[3] - w + 1)
             if numpy.array_equal(padded[i, :, r:r + h, c:c + w], crops[i])]
            for i in range(len(crops))]


def test_crops_of_non_square_images_keep_their_shape(xp):
    """augment crops back to (H, W), not (W, W); random_crop takes (h, w) too."""
    x = numpy.random.default_rng(5).random((4, 3, 5, 7)).astype("float32")
    augmented = transforms.augment(xp.asarray(x), crop_padding=2)
    assert augmented.shape == x.shape
    padded = numpy.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    found = _windows_of(numpy.concatenate([padded, padded[..., ::-1]]),
                        numpy.concatenate([gpunet.backend.to_numpy(augmented)] * 2))
    assert all(found[i] or found[i + 4] for i in range(4))  # flipped or not
    crops = gpunet.backend.to_numpy(transforms.random_crop(xp.asarray(x), (2, 6), padding=1))
    assert crops.shape == (4, 3, 2, 6)
    assert all(_windows_of(numpy.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), crops))


X8 = numpy.zeros((2, 3, 8, 8), "float32")


@pytest.mark.parametrize("call, message", [
    (lambda: transforms.random_crop(X8, 0), "random_crop: size: expected a positive int, got 0"),
    (lambda: transforms.random_crop(X8, -1), "size: expected a positive int, got -1"),
    (lambda: transforms.random_crop(X8, 2.5), "size: expected a positive int, got 2.5"),
    (lambda: transforms.random_crop(X8, (4, 0)), r"size\[1\]: expected a positive int, got 0"),
    (lambda: transforms.random_crop(X8, 6, padding=-1),
     "random_crop: padding: expected a non-negative int, got -1"),
    (lambda: transforms.random_crop(X8, (6, 11), padding=1),
     r"size 6x11 exceeds the padded image 10x10 \(8x8 padded by 1\)"),
    (lambda: transforms.random_crop(X8[0], 4), r"x must be a 4-D .* \(N, C, H, W\), got shape \(3"),
    (lambda: transforms.horizontal_flip(X8[0]), r"horizontal_flip: x must be a 4-D .*\(3, 8, 8\)"),
    (lambda: transforms.horizontal_flip(X8, 2), r"horizontal_flip: p: expected a number in "
                                                r"\[0, 1\], got 2"),
    (lambda: transforms.horizontal_flip(X8, -0.1), r"p: expected a number in \[0, 1\], got -0.1"),
    (lambda: transforms.augment(X8, flip=3), r"augment: flip: expected a number in \[0, 1\]"),
    (lambda: transforms.augment(X8, crop_padding=-2), "augment: crop_padding: expected a non-neg"),
    (lambda: transforms.augment(X8[0]), "augment: x must be a 4-D"),
])
def test_bad_transform_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()




def test_an_explicit_data_root_without_the_files_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="does not hold"):
        load_fashion_mnist(tmp_path / "no-such-dir")
    for name, data in (("train-images-idx3-ubyte", idx_images(3)),
                       ("train-labels-idx1-ubyte", idx_labels(3)),
                       ("t10k-images-idx3-ubyte", idx_images(2))):  # 3 of the 4 files
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(data))
    with pytest.raises(DatasetError, match=r"does not hold t10k-labels-idx1-ubyte"):
        load_fashion_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_labels(2))
    # all four: these are read (and fail their checksums), not another copy found elsewhere
    with pytest.raises(DatasetError, match=f"{tmp_path}.*checksum mismatch"):
        load_fashion_mnist(tmp_path)


def test_other_loaders_with_an_explicit_root_do_not_fall_back(tmp_path):
    from gpunet.data import load_cifar10, load_mnist
    with pytest.raises(DatasetError, match="does not hold"):
        load_mnist(tmp_path)
    with pytest.raises(DatasetError, match=f"looked in {tmp_path}"):
        load_cifar10(tmp_path)
