"""OME metadata is the user's JSON or XML: fields of the wrong type are a one-line refusal naming the
store (issue 11; found by tools/attack.py: ``"multiscales": 5`` gave a TypeError traceback)."""

from __future__ import annotations

import json

import pytest

from protloc.data.formats.ome_zarr import list_samples
from protloc.errors import ProtlocError

MALFORMED = {
    "multiscales an int": {"multiscales": 5},
    "datasets of strings": {"multiscales": [{"datasets": ["0"]}]},
    "multiscale a string": {"multiscales": ["x"]},
    "plate wells of ints": {"plate": {"wells": 3}},
    "well images of strings": {"well": {"images": ["0"]}},
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_ngff_metadata_is_a_one_line_refusal(tmp_path, case):
    store = tmp_path / "field.zarr"
    store.mkdir()
    (store / "zarr.json").write_text(json.dumps(
        {"zarr_format": 3, "node_type": "group", "attributes": {"ome": {"version": "0.5", **MALFORMED[case]}}}))
    with pytest.raises(ProtlocError, match="field") as refusal:
        list_samples(store)
    assert "\n" not in str(refusal.value)


@pytest.mark.parametrize("attribute", ['SizeC="abc"', 'SizeZ=""', 'PhysicalSizeX="wide" PhysicalSizeY="0.1"'])
def test_ome_xml_sizes_that_are_not_numbers_are_a_one_line_refusal(attribute):
    """Found by tools/attack.py: SizeC="abc" gave a ValueError traceback."""
    from protloc.data.formats.ome_tiff import parse_ome_xml

    xml = ('<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0">'
           f'<Pixels ID="P:0" SizeX="32" SizeY="32" {attribute} DimensionOrder="XYCZT" Type="uint8"/></Image></OME>')
    with pytest.raises(ProtlocError, match=r"field\.ome\.tif: OME-XML Pixels \w+=.* is not a number"):
        parse_ome_xml(xml, "field.ome.tif")
