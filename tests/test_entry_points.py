"""Third-party adapters registered through the ``medreg.sources`` entry-point group.

A throwaway "installed distribution" is a ``*.dist-info`` folder with ``METADATA`` and
``entry_points.txt`` on a path added to ``sys.path``: importlib.metadata discovers it exactly as it
discovers a pip-installed package declaring::

    [project.entry-points."medreg.sources"]
    toy_format = "medreg_toy_plugin:ToyAdapter"
"""

from __future__ import annotations

import sys
import textwrap
import warnings

import numpy as np
import pytest

from schemas.card import SourceCard
from sources import base

PLUGIN = textwrap.dedent('''
    import numpy as np
    from pipeline.core.types import CaseRef, PixelBoxAnnotation, Study
    from sources.base import SourceAdapter

    class ToyAdapter(SourceAdapter):
        name = "toy_format"
        formats = ("toy",)
        description = "one synthetic 2-D case with one box"

        def discover(self):
            return [CaseRef(source=self.card.name, case_id="toy-1", patient_id="p1", paths={"image": "-"})]

        def load(self, ref):
            return Study(ref=ref, modality=self.card.modality, image=np.zeros((1, 32, 32), np.uint8),
                         boxes=[PixelBoxAnnotation(self.term_for("thing") or "thing", (2, 3, 10, 12))], rescaled=False)
''')


def _install(tmp_path, dist: str, module: str, body: str, entry: str) -> None:
    (tmp_path / f"{module}.py").write_text(body)
    info = tmp_path / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[medreg.sources]\n{entry}\n")


@pytest.fixture()
def plugin_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    base.adapters.cache_clear()
    yield tmp_path
    for mod in [m for m in sys.modules if m.startswith("medreg_toy")]:
        del sys.modules[mod]
    base.adapters.cache_clear()


def test_entry_point_adapter_is_listed_and_usable(plugin_path):
    before = set(base.adapters())
    assert "toy_format" not in before
    _install(plugin_path, "medreg_toy_plugin", "medreg_toy_plugin", PLUGIN, "toy_format = medreg_toy_plugin:ToyAdapter")
    base.adapters.cache_clear()
    table = base.adapters()
    assert "toy_format" in table and table["toy_format"].description.startswith("one synthetic")
    assert before <= set(table)  # built-ins (incl. dicom_seg, cxr14_csv) are still there
    card = SourceCard(name="toy", title="toy", adapter="toy_format", licence="CC0-1.0", modality="XR",
                      labels={"thing": "nodule"})
    ad = base.get_adapter(card, plugin_path)
    (ref,) = ad.discover()
    st = ad.load(ref)
    assert st.boxes[0].term == "nodule" and st.image.shape == (1, 32, 32) and np.all(st.image == 0)


def test_broken_plugin_warns_and_does_not_break_the_registry(plugin_path):
    _install(plugin_path, "medreg_toy_broken", "medreg_toy_broken", "raise ImportError('missing dependency xyz')\n",
             "toy_broken = medreg_toy_broken:Nope")
    base.adapters.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = base.adapters()
    assert "toy_broken" not in table and {"dicom_seg", "dicom_rtstruct", "cxr14_csv", "coco_json"} <= set(table)
    assert any("toy_broken" in str(w.message) and "xyz" in str(w.message) for w in caught)


def test_builtin_format_adapters_registered():
    table = base.adapters()
    for name in ("dicom_seg", "dicom_rtstruct", "dicom_nifti_labels", "cxr14_csv", "coco_json"):
        assert name in table and issubclass(table[name], base.SourceAdapter) and table[name].name == name


def test_a_card_imports_only_its_own_adapter(plugin_path):
    """A card's adapter is found without importing every adapter (the registry's ``one``): a plugin's, a
    plugin that replaces a built-in of the same name, and a broken plugin of a built-in's name (which warns
    and leaves the built-in in place)."""
    _install(plugin_path, "medreg_toy_plugin", "medreg_toy_plugin", PLUGIN,
             "toy_format = medreg_toy_plugin:ToyAdapter\n"
             "coco_json = medreg_toy_plugin:ToyAdapter")
    base.adapters.cache_clear()
    card = SourceCard(name="toy", title="toy", adapter="toy_format", licence="CC0-1.0", modality="XR",
                      labels={"thing": "nodule"})
    assert base.adapter_class(card).__name__ == "ToyAdapter"
    replaced = card.model_copy(update={"adapter": "coco_json"})
    assert base.adapter_class(replaced).__name__ == "ToyAdapter"
    assert base.adapters()["coco_json"].__name__ == "ToyAdapter"  # the full table agrees

    _install(plugin_path, "medreg_toy_broken", "medreg_toy_broken", "raise ImportError('missing dependency xyz')\n",
             "cxr14_csv = medreg_toy_broken:Nope")
    base.adapters.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cls = base.adapter_class(card.model_copy(update={"adapter": "cxr14_csv"}))
    assert cls.__name__ == "Cxr14CsvAdapter" and any("xyz" in str(w.message) for w in caught)
    with warnings.catch_warnings(record=True), pytest.raises(KeyError, match="did you mean 'toy_format'"):
        warnings.simplefilter("always")
        base.adapter_class(card.model_copy(update={"adapter": "toy_fromat"}))
