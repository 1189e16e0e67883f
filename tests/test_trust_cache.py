"""The analysis cache cannot be trusted blindly (issue 19 §4): an edited, truncated or copied
entry, a hash record pointed at another epoch's, and a bit flip in a checkpoint that keeps its
mtime are each seen on the next run; a bad entry is recomputed (and said), never used."""

import json
import os
import shutil
import warnings

import pandas as pd
import pytest

from landscape.analyzers import analyze_runs
from landscape.analyzers.cache import Cache, _record_seal

SETTINGS = {"max_batches": 1, "losses": ["ce"], "trace": {"rtol": 0.5, "max_matvecs": 3}}
ANALYSES = ["trace"]


@pytest.fixture(scope="module")
def analysed(tiny_kd, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    shutil.copytree(tiny_kd, root / "ck")
    kd = root / "ck" / "digits_tiny" / "kd-seed0"
    ref = analyze_runs([kd], ANALYSES, settings=SETTINGS, out_dir=root / "t", device="cpu", progress=False)
    return root, {n: ref[n] for n in ANALYSES}


def _copy(analysed, tmp_path):
    root, ref = analysed
    shutil.copytree(root, tmp_path / "r", symlinks=True)
    return tmp_path / "r" / "ck" / "digits_tiny" / "kd-seed0", tmp_path / "r" / "t", ref


def _rerun(kd, out):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tables = analyze_runs([kd], ANALYSES, settings=SETTINGS, out_dir=out, device="cpu", progress=False)
    said = [str(w.message) for w in caught if "integrity check" in str(w.message)]
    return tables, said


def _entries(out, name):
    return sorted((out / ".cache" / name).glob("*.csv"))


def _same(tables, ref):
    for n in ANALYSES:
        pd.testing.assert_frame_equal(tables[n].reset_index(drop=True), ref[n].reset_index(drop=True))


def test_an_untouched_cache_is_used_and_silent(analysed, tmp_path):
    kd, out, ref = _copy(analysed, tmp_path)
    tables, said = _rerun(kd, out)
    assert tables.computed == 0 and said == []
    _same(tables, ref)


def test_an_edited_number_in_an_entry_is_recomputed_and_said(analysed, tmp_path):
    kd, out, ref = _copy(analysed, tmp_path)
    entry = _entries(out, "trace")[0]
    lines = entry.read_text().splitlines(keepends=True)
    row = lines[2].split(",")
    col = pd.read_csv(entry, skiprows=1).columns.get_loc("value")
    row[col] = str(float(row[col]) + 1.0)
    lines[2] = ",".join(row)
    entry.write_text("".join(lines))
    tables, said = _rerun(kd, out)
    assert tables.computed == 1 and len(said) == 1 and entry.name in said[0] and "edited or truncated" in said[0]
    _same(tables, ref)  # the edited number is not in trace.csv


def test_a_truncated_entry_is_recomputed(analysed, tmp_path):
    kd, out, ref = _copy(analysed, tmp_path)
    entry = _entries(out, "trace")[1]
    data = entry.read_bytes()
    entry.write_bytes(data[: len(data) * 2 // 3 // 1].rsplit(b"\n", 1)[0] + b"\n")  # whole rows dropped
    tables, said = _rerun(kd, out)
    assert tables.computed == 1 and len(said) == 1
    _same(tables, ref)


def test_an_entry_copied_under_another_key_or_unsealed_is_recomputed(analysed, tmp_path):
    kd, out, ref = _copy(analysed, tmp_path)
    a, b, c = _entries(out, "trace")
    shutil.copy(a, b)
    c.write_text(c.read_text().split("\n", 1)[1])  # an old-style entry: plain CSV, no seal
    tables, said = _rerun(kd, out)
    assert tables.computed == 2 and len(said) == 1 and said[0].startswith("2 cache entries")
    _same(tables, ref)


def _point_record(out, kd, src_epoch, dst_epoch, reseal):
    """Give epoch ``dst``'s hash record epoch ``src``'s hash (this folder's index, as it is now)."""
    _rerun(kd, out)  # the copy's folder has its own index (keyed by its path)
    src, dst = f"epoch_{src_epoch:04d}.pt", f"epoch_{dst_epoch:04d}.pt"
    st = (kd / dst).stat()
    stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    index_path = next(p for p in (out / ".cache" / "hashes").glob("kd-seed0-*.json")
                      if json.loads(p.read_text()).get(dst, [None])[0] == stamp)
    index = json.loads(index_path.read_text())
    digest = index[src][1]
    index[dst] = [stamp, digest, _record_seal(dst, stamp, digest) if reseal else index[dst][2]]
    index_path.write_text(json.dumps(index))


@pytest.mark.parametrize("reseal", [False, True], ids=["edited", "edited-and-resealed"])
def test_a_hash_record_pointed_at_another_epoch_gives_that_epochs_own_numbers(analysed, tmp_path, reseal):
    kd, out, ref = _copy(analysed, tmp_path)
    _point_record(out, kd, 3, 2, reseal)
    tables, said = _rerun(kd, out)
    _same(tables, ref)  # epoch 2's rows carry epoch 2's numbers
    if reseal:  # the record passes its own seal: the hit's rows are of epoch 3, so it is refused
        assert tables.computed == 1 and len(said) == 1 and "another epoch" in said[0]


def test_a_bit_flip_that_keeps_the_mtime_is_seen(analysed, tmp_path):
    """The file's hash is taken again (its ctime moved), so the cache key misses: the checkpoint
    is read again (this byte is zip padding, outside the sealed content: it still loads, and its
    numbers are recomputed and equal); before, the old hash was reused and nothing was read."""
    kd, out, ref = _copy(analysed, tmp_path)
    _rerun(kd, out)  # the copy's hashes recorded: the next run would take them from the index
    ck = kd / "epoch_0002.pt"
    st = ck.stat()
    data = bytearray(ck.read_bytes())
    data[len(data) // 2] ^= 0x01
    ck.write_bytes(bytes(data))
    os.utime(ck, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert ck.stat().st_mtime_ns == st.st_mtime_ns and ck.stat().st_size == st.st_size
    tables, said = _rerun(kd, out)
    assert tables.computed == 1 and tables.problems == []
    _same(tables, ref)


def test_a_put_entry_reads_back_and_names_its_seal(tmp_path):
    cache = Cache(tmp_path)
    rows = [{"run": "kd", "seed": 0, "epoch": 1, "loss": "ce", "layer": "all", "metric": "trace", "value": 1.5}]
    cache.put("trace", "abc", rows)
    assert (tmp_path / "trace" / "abc.csv").read_text().startswith("# landscape-cache 1 trace abc sha256=")
    assert cache.get("trace", "abc")["value"].tolist() == [1.5] and cache.rejected == []
    assert cache.get("cosine", "abc") is None and cache.get("trace", "abd") is None and cache.rejected == []
