"""vlsafe.compare: input guards, settings from the environment, and base vs tuned answers from one model."""

from __future__ import annotations

import random
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest
from peft import PeftModel
from PIL import Image

from vlsafe.compare import (
    CompareConfig,
    Comparer,
    GenerationError,
    InputError,
    InputLimits,
    check_prompt,
    open_image,
)
from vlsafe.errors import VlsafeError
from vlsafe.fixtures.data import UNSAFE_TEXT_REQUESTS, draw_safe_image, draw_unsafe_image


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds no pixel data: decoding it would fail."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


# -- input guards ------------------------------------------------------------------------------------------
def test_check_prompt_strips_and_refuses_empty_long_and_control_tokens() -> None:
    limits = InputLimits(max_prompt_chars=20)
    assert check_prompt("  What is this?\n", limits) == "What is this?"
    with pytest.raises(InputError, match="empty"):
        check_prompt("   ", limits)
    with pytest.raises(InputError, match="21 characters; the limit is 20"):
        check_prompt("x" * 21, limits)
    with pytest.raises(InputError, match="control token"):
        check_prompt("hi <image> there", limits, reserved=["<image>", "</s>"])


def test_open_image_accepts_an_upload_as_rgb(tmp_path: Path) -> None:
    Image.new("L", (40, 30), 128).save(tmp_path / "gray.png")
    image = open_image(tmp_path / "gray.png", InputLimits(), allowed_roots=[tmp_path])
    assert image.mode == "RGB" and image.size == (40, 30)


def test_open_image_refuses_paths_outside_the_upload_folder(tmp_path: Path) -> None:
    uploads, outside = tmp_path / "uploads", tmp_path / "secret"
    uploads.mkdir()
    outside.mkdir()
    Image.new("RGB", (8, 8)).save(outside / "private.png")
    (uploads / "link.png").symlink_to(outside / "private.png")  # a link inside must not lead out
    for path in (outside / "private.png", uploads / "link.png", uploads / ".." / "secret" / "private.png"):
        with pytest.raises(InputError, match="not an uploaded file"):
            open_image(path, InputLimits(), allowed_roots=[uploads])


def test_open_image_refuses_oversized_images_before_decoding(tmp_path: Path) -> None:
    limits = InputLimits(max_image_pixels=1000 * 1000, max_file_bytes=10_000)
    # Header-only files: had they been decoded, the error would be about truncated data, not size.
    (tmp_path / "big.png").write_bytes(png_header_only(2000, 1000))
    with pytest.raises(InputError, match=r"2000x1000 = 2,000,000 pixels; the limit is 1,000,000"):
        open_image(tmp_path / "big.png", limits)
    (tmp_path / "bomb.png").write_bytes(png_header_only(100_000, 100_000))  # over PIL's own bomb limit
    with pytest.raises(InputError, match="decompression bomb|pixels"):
        open_image(tmp_path / "bomb.png", limits)
    (tmp_path / "strip.png").write_bytes(png_header_only(900, 10))
    with pytest.raises(InputError, match="900x10"):
        open_image(tmp_path / "strip.png", limits)
    (tmp_path / "heavy.png").write_bytes(png_header_only(10, 10) + b"\0" * 20_000)
    with pytest.raises(InputError, match="bytes; the limit is 10,000"):
        open_image(tmp_path / "heavy.png", limits)


def test_open_image_refuses_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(InputError, match="not a readable image"):
        open_image(tmp_path / "notes.png", InputLimits())
    (tmp_path / "truncated.png").write_bytes(png_header_only(64, 64))
    with pytest.raises(InputError, match="truncated or corrupt"):
        open_image(tmp_path / "truncated.png", InputLimits())
    with pytest.raises(InputError, match="does not exist"):
        open_image(tmp_path / "missing.png", InputLimits())


# -- settings ----------------------------------------------------------------------------------------------
def test_config_from_env_overrides_defaults_and_names_bad_values() -> None:
    defaults = {"adapter": "org/adapter", "base_model": "org/base", "max_new_tokens": 64}
    config = CompareConfig.from_env({"VLSAFE_MAX_NEW_TOKENS": "32", "VLSAFE_DEVICE": "cpu"}, defaults)
    assert (config.adapter, config.base_model, config.max_new_tokens, config.device) == (
        "org/adapter",
        "org/base",
        32,
        "cpu",
    )
    assert config.limits.max_file_bytes == 10 * 1024 * 1024
    config = CompareConfig.from_env({"VLSAFE_ADAPTER": "me/other", "VLSAFE_MAX_FILE_MB": "0.5"}, defaults)
    assert config.adapter == "me/other" and config.limits.max_file_bytes == 512 * 1024
    with pytest.raises(VlsafeError, match="VLSAFE_MAX_NEW_TOKENS='many' is not a valid int"):
        CompareConfig.from_env({"VLSAFE_MAX_NEW_TOKENS": "many"}, defaults)
    with pytest.raises(VlsafeError, match="set VLSAFE_ADAPTER"):
        CompareConfig.from_env({}, {})
    with pytest.raises(VlsafeError, match="Unknown compare settings"):
        CompareConfig.from_env({}, {"adapter": "a/b", "temperature": 0.7})


# -- generation with the demo's tiny model and trained adapter ---------------------------------------------
@pytest.fixture(scope="module")
def comparer(demo_run: Path) -> Comparer:
    config = CompareConfig(
        adapter=str(demo_run / "outputs/demo/sft_vlguard"),
        base_model=str(demo_run / "outputs/demo/fixtures/tiny-llava"),
        dtype="float32",
        max_new_tokens=32,
    )
    return Comparer.load(config)


@pytest.mark.slow
def test_one_model_answers_both_sides_and_only_the_tuned_side_refuses(comparer: Comparer) -> None:
    assert isinstance(comparer.model, PeftModel)  # one model: the base side disables the adapter
    rng = random.Random(3)
    unsafe = [draw_unsafe_image(rng)]
    base, tuned = comparer.compare("Describe the image in detail.", unsafe)
    assert (base.side, tuned.side) == ("base", "tuned") and base.done and tuned.done
    assert tuned.label == "refused" and base.label == "answered" and base.text != tuned.text
    assert 0 < tuned.first_token_seconds <= tuned.seconds

    safe = [draw_safe_image("green", "square", rng)]
    harmful = UNSAFE_TEXT_REQUESTS[0].format(shape="square", color="green")
    assert comparer.answer("tuned", harmful, safe).label == "refused"
    assert comparer.answer("tuned", "What color is the square in the image?", safe).label == "answered"
    # The adapter is back on after a base answer: the tuned answer does not depend on what ran before.
    assert comparer.answer("tuned", "Describe the image in detail.", unsafe).text == tuned.text
    # Two images (multi-image prompts) and text only both work.
    assert comparer.answer("tuned", "What is shown in this image?", [safe[0], unsafe[0]]).text
    assert comparer.answer("base", "What is shown in this image?").done


@pytest.mark.slow
def test_stream_grows_the_answer_and_stops_generating_when_closed(comparer: Comparer) -> None:
    image = [draw_unsafe_image(random.Random(4))]
    snapshots = list(comparer.stream("tuned", "Describe the image in detail.", image))
    texts = [answer.text for answer in snapshots[:-1]]
    assert len(texts) > 3 and all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))
    assert snapshots[-1].done and not any(answer.done for answer in snapshots[:-1])

    stream = comparer.stream("base", "Describe the image in detail.", image)
    first = next(stream)
    assert not first.done
    stream.close()  # the reader went away (cancel): generation stops and the model is free again
    assert [t for t in threading.enumerate() if t.name.startswith("vlsafe-generate")] == []
    assert comparer.answer("tuned", "Describe the image in detail.", image).label == "refused"


@pytest.mark.slow
def test_prompt_guards_apply_before_generation(comparer: Comparer) -> None:
    with pytest.raises(InputError, match="control token"):
        comparer.answer("tuned", "Describe <image> twice.")  # LLaVA's image placeholder would break it
    with pytest.raises(InputError, match="limit is 2000"):
        comparer.answer("tuned", "x" * 2001)
    image = draw_safe_image("blue", "circle", random.Random(5))
    with pytest.raises(InputError, match="3 images; the limit is 2"):
        comparer.answer("tuned", "Describe the image.", [image] * 3)


@pytest.mark.slow
def test_a_failed_generation_raises_a_clear_error_and_the_next_one_works(
    comparer: Comparer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_generate = comparer.model.generate

    def out_of_memory(**kwargs):  # fault injection: what a GPU out-of-memory inside generate looks like
        time.sleep(0.05)
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(comparer.model, "generate", out_of_memory)
    with pytest.raises(
        GenerationError, match="The base model failed to answer: RuntimeError: CUDA out of memory"
    ):
        comparer.answer("base", "Describe the image.")
    monkeypatch.setattr(comparer.model, "generate", real_generate)
    assert comparer.answer("base", "Describe the image.").done  # the lock was released


@pytest.mark.slow
def test_the_base_model_comes_from_the_adapter_and_a_full_model_is_refused(
    demo_run: Path, tiny_models, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Space loads its adapter through vlsafe.hub, like everyone: the base named in the adapter's config,
    and a clear refusal for a fully fine-tuned folder (it cannot be switched off to answer as the base)."""
    monkeypatch.chdir(demo_run)  # the demo adapter names its base by the relative path training was given
    comparer = Comparer.load(
        CompareConfig(adapter="outputs/demo/sft_vlguard", dtype="float32", max_new_tokens=4)
    )
    assert comparer.base_model == "outputs/demo/fixtures/tiny-llava" and isinstance(comparer.model, PeftModel)
    with pytest.raises(VlsafeError, match="is a fully fine-tuned model .*not an adapter"):
        Comparer.load(CompareConfig(adapter=str(tiny_models["llava"]), base_model=str(tiny_models["llava"])))
