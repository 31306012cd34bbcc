"""Base vs safety-tuned answers from one model in memory: the engine of the `spaces/compare` demo.

The base model is loaded once and the LoRA adapter is put on it; a tuned answer is generated with the
adapter on, a base answer inside ``with model.disable_adapter():``, so the demo needs the memory of one
model, not two. Answers stream token by token (transformers' ``TextIteratorStreamer``) and each comes
with the keyword judge's label and its latency.

User input is untrusted (the demo runs as a public Space): prompts and images are checked against
:class:`InputLimits` before anything is decoded or generated, and image paths must lie in an allowed
folder (the web server's upload folder).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from PIL import Image, ImageOps
from transformers import (
    BatchFeature,
    ProcessorMixin,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from vlsafe.errors import VlsafeError
from vlsafe.evaluation.judges import keyword_label
from vlsafe.hub import adapter_base_model, attach_adapter, tuned_processor
from vlsafe.modeling import load_model, load_processor

logger = logging.getLogger(__name__)

SIDES = ("base", "tuned")
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")  # decoders tried on uploads; nothing exotic
ENV_PREFIX = "VLSAFE_"


class InputError(VlsafeError, ValueError):
    """A prompt or image a user sent is refused (too long, too large, unreadable, outside the uploads)."""


class GenerationError(VlsafeError, RuntimeError):
    """Generation failed for one side; the message names the side and the cause."""


@dataclass(frozen=True)
class InputLimits:
    """Caps on what a user may send, enforced before decoding or generating (a public demo's guard rails)."""

    max_prompt_chars: int = 2000
    max_images: int = 2
    max_file_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    # Processors resize the short side up to their input size, so a 1x10000 strip would become huge.
    max_aspect_ratio: float = 20.0


@dataclass
class CompareConfig:
    """What the comparison serves and how; every field can be set by the env var VLSAFE_<FIELD>."""

    adapter: str  # LoRA adapter folder or Hub id
    base_model: str | None = None  # None: the adapter's `base_model_name_or_path`
    device: str | None = None  # None: cuda when available, else cpu
    dtype: str = "auto"
    max_new_tokens: int = 256
    max_prompt_chars: int = InputLimits.max_prompt_chars
    max_image_pixels: int = InputLimits.max_image_pixels
    max_file_mb: float = InputLimits.max_file_bytes / 1024 / 1024
    concurrency: int = 1  # generations running at once (they share one model, so more only queue up)
    queue_size: int = 16  # requests waiting; more are turned away with "queue full"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, defaults: Mapping[str, object] | None = None
    ) -> CompareConfig:
        """Fields from VLSAFE_<FIELD> variables, else from `defaults` (e.g. the pushed Space's config)."""
        environ = os.environ if environ is None else environ
        values = dict(defaults or {})
        for spec in dataclasses.fields(cls):
            name = ENV_PREFIX + spec.name.upper()
            raw = environ.get(name, "").strip()
            if not raw:
                continue
            convert = {"int": int, "float": float}.get(str(spec.type), str)
            try:
                values[spec.name] = convert(raw)
            except ValueError:
                raise VlsafeError(f"{name}={raw!r} is not a valid {convert.__name__}.") from None
        if not values.get("adapter"):
            raise VlsafeError(
                f"No adapter to compare: set {ENV_PREFIX}ADAPTER to a LoRA adapter folder or Hub id "
                "(locally, `make demo` trains the demo adapter the Space uses by default)."
            )
        unknown = set(values) - {spec.name for spec in dataclasses.fields(cls)}
        if unknown:
            raise VlsafeError(f"Unknown compare settings {sorted(unknown)}; known: {cls.field_names()}.")
        return cls(**values)

    @classmethod
    def field_names(cls) -> list[str]:
        return [spec.name for spec in dataclasses.fields(cls)]

    @property
    def limits(self) -> InputLimits:
        return InputLimits(
            max_prompt_chars=self.max_prompt_chars,
            max_image_pixels=self.max_image_pixels,
            max_file_bytes=int(self.max_file_mb * 1024 * 1024),
        )


@dataclass(frozen=True)
class Answer:
    """One side's answer so far (`done` once generation ended) with its timing."""

    side: str
    text: str
    seconds: float  # since this side's generation started (queueing for the model not counted)
    first_token_seconds: float | None = None
    done: bool = False

    @property
    def label(self) -> str:
        """The keyword judge's label: `refused`, `answered` or `empty`."""
        return keyword_label(self.text)


def check_prompt(prompt: str | None, limits: InputLimits, reserved: Sequence[str] = ()) -> str:
    """The stripped prompt, or InputError when it is empty, too long or holds a model control token.

    Control tokens (e.g. LLaVA's ``<image>``) typed by a user would be expanded by the processor and
    break generation or inject turns, so they are refused rather than passed through.
    """
    text = (prompt or "").strip()
    if not text:
        raise InputError("The prompt is empty: type a question or request.")
    if len(text) > limits.max_prompt_chars:
        raise InputError(
            f"The prompt has {len(text)} characters; the limit is {limits.max_prompt_chars}. Shorten it."
        )
    found = sorted({token for token in reserved if token and token in text})
    if found:
        raise InputError(f"The prompt contains the model's control token(s) {found}; remove them.")
    return text


def open_image(
    path: str | os.PathLike, limits: InputLimits, allowed_roots: Sequence[str | os.PathLike] | None = None
) -> Image.Image:
    """Decode an uploaded image as RGB, refusing paths outside `allowed_roots` and oversized images.

    Size, pixel count and aspect ratio are checked from the file and the image header, before the
    pixels are decoded, so a decompression bomb never reaches memory.
    """
    resolved = Path(path).resolve()  # follows symlinks: a link in the upload folder cannot point out
    if allowed_roots is not None and not any(
        resolved.is_relative_to(Path(root).resolve()) for root in allowed_roots
    ):
        raise InputError("The image is not an uploaded file; upload it through the app.")
    if not resolved.is_file():
        raise InputError("The image file does not exist (any more); upload it again.")
    size = resolved.stat().st_size
    if size > limits.max_file_bytes:
        raise InputError(f"The image file has {size:,} bytes; the limit is {limits.max_file_bytes:,}.")
    try:
        image = Image.open(resolved, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError:
        raise InputError(
            "The image has far too many pixels (decompression bomb); it was not decoded."
        ) from None
    except (OSError, ValueError, SyntaxError):
        raise InputError(
            f"The file is not a readable image (accepted: {', '.join(IMAGE_FORMATS)})."
        ) from None
    width, height = image.size
    if width * height > limits.max_image_pixels:
        image.close()
        raise InputError(
            f"The image is {width}x{height} = {width * height:,} pixels; the limit is "
            f"{limits.max_image_pixels:,}. Downscale it."
        )
    if min(width, height) < 1 or max(width, height) / min(width, height) > limits.max_aspect_ratio:
        image.close()
        raise InputError(
            f"The image is {width}x{height}; sides more than {limits.max_aspect_ratio:g}:1 apart are refused."
        )
    try:
        image.load()
        return ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError, SyntaxError):
        raise InputError("The image file is truncated or corrupt; it could not be decoded.") from None


class _StopOnEvent(StoppingCriteria):
    """Ends generation once `event` is set (the reader stopped listening: cancelled, or closed)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full(
            (input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device
        )


class Comparer:
    """Streams the answers of a base model and of the same model with its safety adapter on.

    Generations are serialized by a lock: they share one model, and `disable_adapter` switches the
    adapter off for the whole model while a base answer is generated.
    """

    def __init__(
        self,
        model: PeftModel,
        processors: Mapping[str, ProcessorMixin],
        *,
        max_new_tokens: int = 256,
        limits: InputLimits | None = None,
        base_model: str | None = None,
        adapter: str | None = None,
    ) -> None:
        self.base_model, self.adapter = base_model, adapter  # names, for display
        self.model = model.eval()
        self.processors = dict(processors)
        self.max_new_tokens = max_new_tokens
        self.limits = limits or InputLimits()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, config: CompareConfig) -> Comparer:
        """Load the base model once, put the adapter on it, and the processors of both sides."""
        base_model = config.base_model or adapter_base_model(config.adapter)
        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        logger.info("Loading base model %s and adapter %s on %s", base_model, config.adapter, device)
        model = load_model(base_model, dtype=config.dtype).to(device)
        model = attach_adapter(model, config.adapter, base_model=base_model)
        base_processor = load_processor(base_model)
        # the adapter folder carries the processor and chat template it was trained with
        tuned = tuned_processor(config.adapter, base_processor, base_model=base_model)
        return cls(
            model,
            {"base": base_processor, "tuned": tuned},
            max_new_tokens=config.max_new_tokens,
            limits=config.limits,
            base_model=base_model,
            adapter=config.adapter,
        )

    def reserved_tokens(self) -> set[str]:
        """Control tokens a prompt may not contain: special tokens and image/video placeholders."""
        tokens: set[str] = set()
        for processor in self.processors.values():
            tokens.update(processor.tokenizer.all_special_tokens)
            tokens.update(
                str(getattr(processor, name))
                for name in ("image_token", "video_token")
                if getattr(processor, name, None)
            )
        return tokens

    def check_prompt(self, prompt: str | None) -> str:
        """The prompt, stripped, if it is within the limits (else InputError)."""
        return check_prompt(prompt, self.limits, sorted(self.reserved_tokens()))

    def stream(self, side: str, prompt: str, images: Sequence[Image.Image] = ()) -> Iterator[Answer]:
        """Yield `side`'s answer as it grows, then once more with ``done=True``; GenerationError on failure."""
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, not {side!r}")
        prompt = self.check_prompt(prompt)
        if len(images) > self.limits.max_images:
            raise InputError(f"{len(images)} images; the limit is {self.limits.max_images}.")
        processor = self.processors[side]
        try:
            inputs = self._inputs(processor, prompt, images)
        except Exception as exc:  # e.g. an image the processor cannot handle: this request fails, not the app
            logger.error("Preparing the %s model's inputs failed", side, exc_info=exc)
            raise GenerationError(
                f"The {side} model's inputs could not be prepared: {type(exc).__name__}: {exc}"
            ) from exc
        streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()
        started: list[float] = []
        failures: list[Exception] = []

        def generate() -> None:
            try:
                with self._lock, self._adapter(side), torch.inference_mode():
                    started.append(time.perf_counter())
                    self.model.generate(
                        **inputs,
                        streamer=streamer,
                        do_sample=False,
                        max_new_tokens=self.max_new_tokens,
                        stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]),
                    )
            except Exception as exc:  # handed to the reader, which raises it as GenerationError
                failures.append(exc)
                streamer.end()

        thread = threading.Thread(target=generate, name=f"vlsafe-generate-{side}", daemon=True)
        thread.start()
        text, first = "", None
        try:
            for piece in streamer:
                if not piece:
                    continue
                text += piece
                elapsed = time.perf_counter() - started[0]
                first = first if first is not None else elapsed
                yield Answer(side, text, elapsed, first)
        finally:
            stop.set()  # the reader is gone (done, failed, or closed early): stop generating
            thread.join()
        if failures:
            exc = failures[0]
            logger.error("Generation failed for the %s model", side, exc_info=exc)
            raise GenerationError(f"The {side} model failed to answer: {type(exc).__name__}: {exc}") from exc
        yield Answer(side, text.strip(), time.perf_counter() - started[0], first, done=True)

    def answer(self, side: str, prompt: str, images: Sequence[Image.Image] = ()) -> Answer:
        """`side`'s complete answer."""
        final = None
        for final in self.stream(side, prompt, images):  # noqa: B007 - the last one is the answer
            pass
        assert final is not None and final.done
        return final

    def compare(self, prompt: str, images: Sequence[Image.Image] = ()) -> tuple[Answer, Answer]:
        """The base and the tuned answer to the same prompt and images."""
        return self.answer("base", prompt, images), self.answer("tuned", prompt, images)

    def _inputs(self, processor: ProcessorMixin, prompt: str, images: Sequence[Image.Image]) -> BatchFeature:
        """Token ids and pixel values of a one-turn user message: the images, then the prompt."""
        content = [{"type": "image", "image": image} for image in images] + [{"type": "text", "text": prompt}]
        inputs = processor.apply_chat_template(
            [{"role": "user", "content": content}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        ).to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    def _adapter(self, side: str) -> contextlib.AbstractContextManager:
        return self.model.disable_adapter() if side == "base" else contextlib.nullcontext()
