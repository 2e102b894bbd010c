"""The modelled hourly grid factors kept in the user cache (ems.cache): a new process reads the
model instead of making it, and gets the same series, bit for bit."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ems import cache, sun
from ems.accounting import gridmix


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EMS_CACHE_DIR", str(tmp_path / "cache"))
    gridmix._raw_region.cache_clear()
    yield tmp_path / "cache"
    gridmix._raw_region.cache_clear()


def test_a_cached_model_is_the_model(cache_dir):
    made, load = gridmix._raw(gridmix.load_mix("CN-East"), 2024)
    first = gridmix._raw_region("CN-East", 2024)  # made and kept
    assert len(list((cache_dir / "gridmix").glob("CN-East-2024-*.npz"))) == 1
    gridmix._raw_region.cache_clear()
    again = gridmix._raw_region("CN-East", 2024)  # read back
    for raw, weights in (first, again):
        pd.testing.assert_frame_equal(raw.frame, made.frame, check_exact=True)
        pd.testing.assert_series_equal(weights, load, check_exact=True)
        assert (raw.source, raw.method, raw.data_source, raw.notes) == (made.source, made.method, made.data_source,
                                                                        made.notes)


def test_the_key_follows_the_data_and_a_damaged_entry_is_made_again(cache_dir):
    gridmix._raw_region("SI", 2024)
    (entry,) = (cache_dir / "gridmix").glob("SI-2024-*.npz")
    gridmix._raw_region("SI", 2023)  # another year, another entry
    assert len(list((cache_dir / "gridmix").glob("SI-*.npz"))) == 2
    entry.write_bytes(b"not an npz file")
    gridmix._raw_region.cache_clear()
    raw, _ = gridmix._raw_region("SI", 2024)  # unreadable: modelled again and kept again
    assert raw.method == "modelled" and cache.load_arrays("gridmix", entry.stem) is not None


def test_no_cache_when_it_is_off_or_cannot_be_written(tmp_path, monkeypatch):
    monkeypatch.setenv("EMS_CACHE_DIR", "off")
    assert cache.cache_dir() is None
    cache.save_arrays("gridmix", "x", {}, {})  # nothing happens
    assert cache.load_arrays("gridmix", "x") is None
    blocked = tmp_path / "file"
    blocked.write_text("a file where the folder would be")
    monkeypatch.setenv("EMS_CACHE_DIR", str(blocked))
    cache.save_arrays("gridmix", "x", {"a": pd.Series([1.0]).to_numpy()}, {"k": 1})  # skipped, no error
    assert cache.load_arrays("gridmix", "x") is None


def test_a_new_process_reads_what_another_kept(cache_dir):
    code = ("import sys, time\nfrom ems.accounting import gridmix\nt = time.perf_counter()\n"
            "s = gridmix.regional_intensity('CN-North', 2024, 0.55, 'test')\n"
            "print(float(s.frame['average_kg_per_kwh'].sum()))")
    env = dict(os.environ, EMS_CACHE_DIR=str(cache_dir))
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert list((cache_dir / "gridmix").glob("CN-North-2024-*.npz"))
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert first.stdout == second.stdout


def test_the_key_follows_the_code_of_the_sun(cache_dir, tmp_path, monkeypatch):
    """A change to ems.sun (or its table of SPA terms) names a new entry: the old one, made by
    the old sun, is never read again but modelled anew."""
    gridmix._raw_region("SI", 2024)
    key = gridmix._cache_key("SI", 2024)
    assert [p.stem for p in (cache_dir / "gridmix").glob("SI-2024-*.npz")] == [key]
    changed = tmp_path / "sun.py"
    changed.write_text(Path(sun.__file__).read_text() + "\n# a changed sun\n")
    with monkeypatch.context() as m:
        m.setattr(sun, "__file__", str(changed))
        assert gridmix._cache_key("SI", 2024) != key
    assert gridmix._cache_key("SI", 2024) == key
    terms = tmp_path / "spa-terms.json"
    terms.write_bytes(sun.TERMS_FILE.read_bytes() + b" ")
    monkeypatch.setattr(sun, "TERMS_FILE", terms)
    assert gridmix._cache_key("SI", 2024) != key
    gridmix._raw_region.cache_clear()
    gridmix._raw_region("SI", 2024)  # modelled again under the new name
    assert len(list((cache_dir / "gridmix").glob("SI-2024-*.npz"))) == 2
