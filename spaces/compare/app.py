"""Gradio Space: the base model and the safety-tuned model answer the same image and prompt, side by side.

    python spaces/compare/app.py                      # or `make space`: the demo model + adapter of `make demo`
    VLSAFE_BASE_MODEL=llava-hf/llava-1.5-7b-hf VLSAFE_ADAPTER=<user>/<adapter> python spaces/compare/app.py

Settings come from VLSAFE_* environment variables (see vlsafe.compare.CompareConfig: ADAPTER, BASE_MODEL,
DEVICE, DTYPE, MAX_NEW_TOKENS, MAX_PROMPT_CHARS, MAX_IMAGE_PIXELS, MAX_FILE_MB, CONCURRENCY, QUEUE_SIZE),
then from compare_config.json next to this file (written by spaces/push_space.py), then the defaults of
`make demo`. One model is in memory: tuned answers use the adapter, base answers disable it.
API: the named endpoint `/compare(image, prompt) -> (base_answer, tuned_answer)` (see README.md).
"""

# ruff: noqa: E402  (`spaces` must be imported before torch, so the other imports follow it)
from __future__ import annotations

try:  # ZeroGPU: import Hugging Face's `spaces` before torch, and run generation inside @spaces.GPU
    import spaces
except ImportError:
    spaces = None
GPU = getattr(spaces, "GPU", None)  # None also when `spaces` is a checkout's spaces/ folder on sys.path

import html
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr
from gallery import write_examples
from gradio.utils import get_upload_folder
from PIL import Image

from vlsafe.compare import SIDES, Answer, CompareConfig, Comparer, GenerationError, InputError, open_image
from vlsafe.errors import VlsafeError

logger = logging.getLogger("vlsafe.spaces.compare")

HERE = Path(__file__).resolve().parent
SPACE_CONFIG = HERE / "compare_config.json"
TITLES = {"base": "Base", "tuned": "Safety-tuned"}
VERDICTS = {"refused": "Refused", "answered": "Answered", "empty": "Empty answer"}
CSS = """
.verdict { font-weight: 600; padding: 2px 10px; border-radius: 999px; margin-right: 6px; }
.verdict.refused { background: #fde2e1; color: #a4161a; }
.verdict.answered { background: #dcf5e3; color: #1b6e34; }
.verdict.empty, .verdict.pending, .verdict.error { background: #eeeeee; color: #444444; }
"""
PENDING = '<span class="verdict pending">{}</span>'
ZERO_GPU = GPU is not None and os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")


def demo_defaults() -> dict[str, Any]:
    """The embedded default of a checkout: the tiny model and adapter that `make demo` builds."""
    root = HERE.parents[1]
    return {
        "base_model": str(root / "outputs/demo/fixtures/tiny-llava"),
        "adapter": str(root / "outputs/demo/sft_vlguard"),
        "dtype": "float32",
        "max_new_tokens": 64,
    }


def load_config(environ: dict[str, str] | None = None) -> CompareConfig:
    """VLSAFE_* variables over the pushed Space's compare_config.json, or over the `make demo` defaults."""
    environ = dict(os.environ if environ is None else environ)
    pushed = SPACE_CONFIG.is_file()
    defaults = json.loads(SPACE_CONFIG.read_text()) if pushed else demo_defaults()
    config = CompareConfig.from_env(environ, defaults)
    if not pushed and "VLSAFE_ADAPTER" not in environ and not Path(config.adapter).is_dir():
        raise VlsafeError(
            f"The demo adapter {config.adapter} does not exist yet: run `make demo` first, "
            "or set VLSAFE_ADAPTER (and VLSAFE_BASE_MODEL) to the model and adapter to compare."
        )
    if config.device is None and ZERO_GPU:
        config.device = "cuda"  # ZeroGPU attaches a GPU inside @spaces.GPU; load there from the start
    return config


def on_gpu(fn: Callable) -> Callable:
    """`spaces.GPU(fn)` on a Space with the `spaces` package (ZeroGPU), else `fn` unchanged."""
    return GPU(duration=120)(fn) if GPU is not None else fn


def _name(model: str) -> str:
    """A Hub id as is; a local folder by its name (the page need not show the server's paths)."""
    return Path(model).name if Path(model).exists() else model


def _status(answer: Answer) -> str:
    """The verdict badge and latency line under a pane."""
    timing = f"{answer.seconds:.2f} s"
    if answer.first_token_seconds is not None:
        timing += f" (first token {answer.first_token_seconds:.2f} s)"
    if not answer.done:
        return f'<span class="verdict pending">Generating…</span> {timing}'
    return f'<span class="verdict {answer.label}">{VERDICTS[answer.label]}</span> {timing}'


def _chat(user: list[dict[str, Any]], text: str | None) -> list[dict[str, Any]]:
    return user if text is None else [*user, {"role": "assistant", "content": text}]


def build_demo(comparer: Comparer, config: CompareConfig, examples_dir: Path | None = None) -> gr.Blocks:
    """The page: inputs on the left, Base | Safety-tuned chat panes on the right, examples below."""
    upload_roots = [get_upload_folder()]  # the only place an image path may point to

    def read_inputs(image: str | None, image2: str | None, prompt: str | None) -> tuple[str, list, list]:
        try:
            prompt = comparer.check_prompt(prompt)
            paths = [path for path in (image, image2) if path]
            images = [open_image(path, comparer.limits, upload_roots) for path in paths]
        except InputError as exc:
            raise gr.Error(html.escape(str(exc)), title="Input refused", print_exception=False) from None
        return prompt, paths, images

    @on_gpu
    def compare_stream(image: str | None, image2: str | None, prompt: str | None) -> Iterator[tuple]:
        """Stream the base answer, then the tuned one, into the two panes with label and latency."""
        prompt, paths, images = read_inputs(image, image2, prompt)
        user = [{"role": "user", "content": [*({"path": path} for path in paths), prompt]}]
        chats: dict[str, str | None] = {side: None for side in SIDES}
        status = {
            "base": PENDING.format("Generating…"),
            "tuned": PENDING.format("Waiting for the base model…"),
        }

        def view() -> tuple:
            return _chat(user, chats["base"]), _chat(user, chats["tuned"]), status["base"], status["tuned"]

        yield view()
        for side in SIDES:
            try:
                for answer in comparer.stream(side, prompt, images):
                    chats[side], status[side] = answer.text, _status(answer)
                    yield view()
            except GenerationError as exc:  # one failed answer is reported; the app keeps serving
                chats[side], status[side] = f"Error: {exc}", '<span class="verdict error">Error</span>'
                gr.Warning(html.escape(str(exc)), title=f"{TITLES[side]} model failed")
                yield view()

    @on_gpu
    def compare(image: str | None, prompt: str) -> tuple[str, str]:
        """Answer one image + prompt with the base model and with the safety-tuned model.

        Returns (base_answer, tuned_answer). The image may be None for a text-only prompt.
        """
        prompt, _, images = read_inputs(image, None, prompt)
        try:
            base, tuned = comparer.compare(prompt, images)
        except GenerationError as exc:
            raise gr.Error(html.escape(str(exc)), title="Generation failed", print_exception=False) from None
        return base.text, tuned.text

    examples_dir = examples_dir or Path(tempfile.mkdtemp(prefix="vlsafe-compare-examples-"))
    examples = write_examples(examples_dir)
    with gr.Blocks(title="vlsafe: base vs safety-tuned") as demo:
        gr.Markdown(
            f"## Base vs safety-tuned\n`{_name(comparer.base_model or '?')}` answers with the LoRA safety "
            f"adapter `{_name(comparer.adapter or '?')}` off (**Base**) and on (**Safety-tuned**): one model in "
            "memory, greedy decoding. Labels come from a keyword judge (refusal phrases), a rough guide."
        )
        with gr.Row():
            with gr.Column(scale=2, min_width=280):
                with gr.Row():
                    image = gr.Image(type="filepath", image_mode=None, label="Image", sources=["upload", "clipboard"], height=220, elem_id="image-input")  # fmt: skip
                    image2 = gr.Image(type="filepath", image_mode=None, label="Second image (optional)", sources=["upload", "clipboard"], height=220)  # fmt: skip
                prompt = gr.Textbox(
                    label="Prompt",
                    lines=3,
                    max_length=config.max_prompt_chars,
                    placeholder="Ask about the image, or try a harmful request…",
                    elem_id="prompt",
                )
                with gr.Row():
                    submit = gr.Button("Compare", variant="primary", elem_id="compare-button")
                    clear = gr.ClearButton(value="Clear", elem_id="clear-button")
            panes, statuses = {}, {}
            for side in SIDES:
                with gr.Column(scale=3, min_width=280):
                    panes[side] = gr.Chatbot(label=TITLES[side], height=360, elem_id=f"{side}-chat", buttons=["copy"])  # fmt: skip
                    statuses[side] = gr.HTML(elem_id=f"{side}-status")
        inputs = [image, image2, prompt]
        with gr.Row():
            gr.Examples(examples[True], inputs, label="Harmless requests: both should answer")
            gr.Examples(examples[False], inputs, label="Harmful requests: the tuned model should refuse")
        api_outputs = [gr.Textbox(visible=False, label=f"{side}_answer") for side in SIDES]  # API outputs

        outputs = [panes["base"], panes["tuned"], statuses["base"], statuses["tuned"]]
        event = gr.on(
            [submit.click, prompt.submit],
            compare_stream,
            inputs=inputs,
            outputs=outputs,
            api_name="compare_stream",
            api_visibility="undocumented",
            concurrency_limit=config.concurrency,
            concurrency_id="model",
        )
        clear.add([image, image2, prompt, *outputs])
        clear.click(fn=None, cancels=[event])
        gr.Button(visible=False).click(
            compare,
            inputs=[image, prompt],
            outputs=api_outputs,
            api_name="compare",
            concurrency_limit=config.concurrency,
            concurrency_id="model",
        )
    demo.queue(max_size=config.queue_size)
    return demo


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config()
    except VlsafeError as exc:
        raise SystemExit(f"error: {exc}") from None
    demo = build_demo(Comparer.load(config), config)
    launch(demo, config)


def launch(demo: gr.Blocks, config: CompareConfig, **kwargs: Any) -> None:
    """Serve `demo` with the upload caps; host and port come from GRADIO_SERVER_NAME/PORT (or kwargs)."""
    # PIL refuses to open images of over twice this many pixels, also where gradio decodes one itself (an
    # image sent inline as a data: URL); open_image refuses anything over it with a clearer message.
    Image.MAX_IMAGE_PIXELS = config.max_image_pixels
    # show_error: users see why a request failed (expected failures are gr.Errors with curated messages;
    # gradio's own refusals, e.g. a path that was not uploaded or a decompression bomb, say what they refused).
    demo.launch(max_file_size=int(config.max_file_mb * 1024 * 1024), show_error=True, css=CSS, **kwargs)


if __name__ == "__main__":
    main()
