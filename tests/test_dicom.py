"""DICOM reading on pydicom's bundled test files: HU, windows, MONOCHROME1, multi-frame, decoders."""

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import workbench  # noqa: F401
from workbench import dicom, preprocess
from workbench.errors import WorkbenchError


def _read(name):
    return dicom.read(get_testdata_file(name))


def test_ct_rescale_gives_hounsfield_units_and_presets_window_them():
    ds = _read("CT_small.dcm")
    raw = ds.pixel_array.astype(float)
    hu = raw * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert float(ds.RescaleIntercept) == -1024  # so raw values are not HU
    for preset, (lv, wd) in preprocess.WINDOW_PRESETS.items():
        img, win = dicom.to_uint8(ds, preset)
        assert img.shape == (1, 128, 128, 1) and img.dtype == np.uint8
        assert (win.level, win.width) == (lv, wd)
        np.testing.assert_array_equal(img[0, ..., 0], preprocess.window(hu, lv, wd))
    # bone and lung windows differ on the same HU
    assert not np.array_equal(dicom.to_uint8(ds, "bone")[0], dicom.to_uint8(ds, "lung")[0])


def test_custom_and_header_windows():
    ds = _read("CT_small.dcm")
    img, win = dicom.to_uint8(ds, "custom", level=40, width=400)
    assert (win.kind, win.level, win.width) == ("custom", 40.0, 400.0)
    with pytest.raises(WorkbenchError, match="needs a level and a width"):
        dicom.to_uint8(ds, "custom")
    # CT_small has no window in its header: auto falls back to min-max, header is an error
    assert dicom.to_uint8(ds, "auto")[1].kind == "minmax"
    with pytest.raises(WorkbenchError, match="no WindowCenter"):
        dicom.to_uint8(ds, "header")
    mr = _read("MR_small.dcm")
    img, win = dicom.to_uint8(mr, "auto")
    assert (win.kind, win.level, win.width) == ("header", 600.0, 1600.0)


def test_hu_preset_on_mr_is_refused():
    with pytest.raises(WorkbenchError, match="Hounsfield units but DICOM file .* has modality MR"):
        dicom.to_uint8(_read("MR_small.dcm"), "lung", path="MR_small.dcm")


def test_monochrome1_is_inverted(tmp_path):
    path = tmp_path / "mono1.dcm"
    shutil.copy(get_testdata_file("MR_small.dcm"), path)
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(path)
    m1, _ = dicom.to_uint8(dicom.read(path), "minmax")
    m2, _ = dicom.to_uint8(_read("MR_small.dcm"), "minmax")
    np.testing.assert_array_equal(m1, 255 - m2)


def test_multi_frame_gives_one_image_per_frame():
    img, _ = dicom.to_uint8(_read("rtdose.dcm"))
    assert img.shape == (15, 10, 10, 1)
    rgb, win = dicom.to_uint8(_read("SC_rgb_rle_2frame.dcm"))
    assert rgb.shape == (2, 100, 100, 3) and win.kind == "rgb"
    assert dicom.select_frames(15, "middle") == [7] and dicom.select_frames(15, "first") == [0]
    assert dicom.select_frames(3, "all") == [0, 1, 2]


def test_palette_colour_becomes_rgb():
    img, win = dicom.to_uint8(_read("examples_palette.dcm"))
    assert img.shape == (1, 350, 800, 3) and win.kind == "palette" and img.dtype == np.uint8


def test_missing_decoder_is_named():
    ds = _read("MR_small_jpeg_ls_lossless.dcm")
    from pydicom.pixels import get_decoder
    if get_decoder(ds.file_meta.TransferSyntaxUID).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    with pytest.raises(WorkbenchError) as e:
        dicom.to_uint8(ds, path="MR_small_jpeg_ls_lossless.dcm")
    msg = str(e.value)
    assert "JPEG-LS Lossless" in msg and "MR_small_jpeg_ls_lossless.dcm" in msg
    assert "pylibjpeg-libjpeg" in msg and "python-gdcm" in msg and "pyjpegls" in msg


def test_failed_plugin_names_the_alternatives():
    # 12-bit JPEG Extended: Pillow is installed but cannot decode 12-bit samples
    ds = _read("JPGExtended.dcm")
    try:
        ds.pixel_array
        pytest.skip("a 12-bit JPEG decoder is installed here")
    except Exception:  # noqa: BLE001
        pass
    with pytest.raises(WorkbenchError, match=r"JPEG Extended .*pillow failed.*pylibjpeg-libjpeg"):
        dicom.to_uint8(ds, path="JPGExtended.dcm")


def test_non_image_and_non_dicom_files(tmp_path):
    with pytest.raises(WorkbenchError, match="has no pixel data"):
        dicom.to_uint8(_read("test-SR.dcm"), path="sr.dcm")
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"not dicom at all")
    with pytest.raises(WorkbenchError, match="not a readable DICOM file"):
        dicom.to_uint8(dicom.read(bad), path=bad)
    assert dicom.is_dicom(get_testdata_file("CT_small.dcm"))
    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG....")
    assert not dicom.is_dicom(png)
