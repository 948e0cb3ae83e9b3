"""Both decoders on the same rendered frames; QR only; region of interest."""

from __future__ import annotations

import numpy as np
import pytest
import zxingcpp

from drivers.qr.decoders import DecodedCode, DecoderName, make_decoder
from drivers.qr.simulator import render_frame, render_qr

DECODERS: list[DecoderName] = ["zxing", "pyzbar"]
TEXT = "https://zwfw.example.gov.cn/pj?case_no=37010220240001"


def gray(frame: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(frame[:, :, 0])


@pytest.fixture(scope="module")
def frames() -> dict[str, np.ndarray]:
    """Distorted frames with and without a code, at both camera sizes, shared by both decoders."""
    rng = np.random.default_rng(42)
    made: dict[str, np.ndarray] = {}
    for name, size in (("480p", (640, 480)), ("720p", (1280, 720))):
        for index in range(3):
            made[f"{name}-code-{index}"] = gray(render_frame(f"{TEXT}&n={index}", size, rng))
        made[f"{name}-blank"] = gray(render_frame(None, size, rng))
    return made


@pytest.mark.parametrize("decoder", DECODERS)
def test_same_frames_decode_with_both_decoders(frames: dict[str, np.ndarray], decoder: DecoderName) -> None:
    qr = make_decoder(decoder)
    assert qr.name == decoder
    for name, frame in frames.items():
        if "blank" in name:
            assert qr.decode(frame) == [], name
        else:
            index = name.rsplit("-", 1)[1]
            assert qr.decode(frame) == [DecodedCode(f"{TEXT}&n={index}", "QRCode")], name


@pytest.mark.parametrize("decoder", DECODERS)
def test_chinese_text_survives_decoding(decoder: DecoderName) -> None:
    image = np.pad(render_qr("取件码 370102-0042", module_px=4), 20, constant_values=255)
    assert make_decoder(decoder).decode(image) == [DecodedCode("取件码 370102-0042")]


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("symbology", ["Code128", "DataMatrix", "Aztec", "PDF417", "EAN13"])
def test_other_symbologies_are_not_decoded(decoder: DecoderName, symbology: str) -> None:
    content = "5901234123457" if symbology == "EAN13" else "123456789012"
    barcode = zxingcpp.create_barcode(content, getattr(zxingcpp.BarcodeFormat, symbology))
    image = np.pad(np.asarray(zxingcpp.write_barcode_to_image(barcode, scale=4)), 30, constant_values=255)
    assert [b.text for b in zxingcpp.read_barcodes(image)] == [content]  # readable in principle
    assert make_decoder(decoder).decode(image) == []


@pytest.mark.parametrize("decoder", DECODERS)
def test_region_of_interest(decoder: DecoderName) -> None:
    frame = np.full((480, 640), 200, dtype=np.uint8)
    code = render_qr("ROI-CODE-1", module_px=5)
    side = code.shape[0]
    frame[300 : 300 + side, 400 : 400 + side] = code
    assert make_decoder(decoder).decode(frame) == [DecodedCode("ROI-CODE-1")]
    assert make_decoder(decoder, roi=(380, 280, 250, 200)).decode(frame) == [DecodedCode("ROI-CODE-1")]
    assert make_decoder(decoder, roi=(0, 0, 320, 240)).decode(frame) == []


def test_roi_outside_the_frame_decodes_nothing_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    qr = make_decoder("zxing", roi=(2000, 0, 100, 100))
    frame = np.full((480, 640), 255, dtype=np.uint8)
    assert qr.decode(frame) == []
    assert qr.decode(frame) == []
    assert len([r for r in caplog.records if "outside" in r.getMessage()]) == 1


@pytest.mark.parametrize("roi", [(0, 0, 0, 5), (-1, 0, 5, 5), (0, 0, 5), (0.5, 0, 5, 5)])
def test_bad_roi_is_refused(roi: tuple[int, int, int, int]) -> None:
    with pytest.raises(ValueError, match="roi"):
        make_decoder("zxing", roi=roi)


def test_unknown_decoder_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown QR decoder"):
        make_decoder("opencv")  # type: ignore[arg-type]
