"""Real-size shapes for the benchmarks: processors and random-weight models shaped like LLaVA-1.5-7B and
Qwen2.5-VL-7B, and VLGuard-shaped data. Speed depends on shapes, not on weight values, so nothing is
downloaded: the tokenizer is the tiny fixture's (its vocabulary fits in the real embedding tables) and the
image preprocessing is the real checkpoints' (576 image tokens for LLaVA-1.5, native resolution for Qwen).
"""

from __future__ import annotations

import json
import os
import random
import zipfile
from io import BytesIO
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaProcessor,
    PretrainedConfig,
    PreTrainedModel,
    ProcessorMixin,
    Qwen2_5_VLConfig,
)

from vlsafe.fixtures import build_tiny_vlm

SHAPES = ("tiny", "llava-1.5-7b", "qwen2.5-vl-7b")
FAMILY = {"tiny": "llava", "llava-1.5-7b": "llava", "qwen2.5-vl-7b": "qwen2_5_vl"}
WORDS = (
    "the image shows a person object street building table car animal sign text color light hand how what "
    "why can you describe explain step detail please help me with this picture scene background people "
    "safety risk answer question write make use find plan information about important careful"
).split()
SHARED_VLGUARD = Path(__file__).resolve().parents[2] / "shared" / "data" / "vlguard" / "train.json"


def tiny_checkpoint(family: str, scratch: Path) -> Path:
    """The tiny fixture of `family` in `scratch`, built once: every process of a benchmark loads the same
    files (built in a side folder, then renamed, so a crashed build is never taken for a finished one)."""
    final = scratch / f"tiny-{family}"
    if not final.is_dir():
        partial = build_tiny_vlm(family, scratch / f"tiny-{family}.partial-{os.getpid()}")
        partial.rename(final)
    return final


def build_processor(shape: str, scratch: Path) -> ProcessorMixin:
    """The processor of `shape`: the tiny fixture's tokenizer and template, the real image preprocessing."""
    processor = AutoProcessor.from_pretrained(tiny_checkpoint(FAMILY[shape], scratch))
    if shape == "llava-1.5-7b":  # CLIP ViT-L/14 at 336 px: 24 x 24 = 576 image tokens
        return LlavaProcessor(
            image_processor=CLIPImageProcessor(
                size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}
            ),
            tokenizer=processor.tokenizer,
            patch_size=14,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=processor.chat_template,
        )
    if shape == "qwen2.5-vl-7b":  # the checkpoint's pixel range (up to 12.8 MP) instead of the tiny cap
        processor.image_processor.min_pixels = processor.image_processor.size["shortest_edge"] = 3136
        processor.image_processor.max_pixels = processor.image_processor.size["longest_edge"] = 12845056
    return processor


def build_model(shape: str, processor: ProcessorMixin, scratch: Path, dtype: torch.dtype) -> PreTrainedModel:
    """A random-weight model of `shape` (the tiny fixture itself for "tiny"), on the GPU when there is one."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if shape == "tiny":
        return AutoModelForImageTextToText.from_pretrained(tiny_checkpoint("llava", scratch), dtype=dtype).to(
            device
        )
    with torch.device(device):
        return AutoModelForImageTextToText.from_config(
            model_config(shape, processor, scratch), dtype=dtype, attn_implementation="sdpa"
        )


def model_config(shape: str, processor: ProcessorMixin, scratch: Path) -> PretrainedConfig:
    """The real checkpoint's architecture, with the token ids of the processor's tokenizer."""
    tokenizer = processor.tokenizer
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if shape == "llava-1.5-7b":
        return LlavaConfig(
            vision_config=CLIPVisionConfig(
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=24,
                num_attention_heads=16,
                image_size=336,
                patch_size=14,
                projection_dim=768,
            ),
            text_config=LlamaConfig(
                hidden_size=4096,
                intermediate_size=11008,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=32,
                vocab_size=32064,
                max_position_embeddings=4096,
                **ids,
            ),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            image_seq_length=576,
            vision_feature_select_strategy="default",
            vision_feature_layer=-2,
            pad_token_id=tokenizer.pad_token_id,
        )
    tiny = AutoConfig.from_pretrained(tiny_checkpoint("qwen2_5_vl", scratch))
    text = {
        k: v for k, v in tiny.text_config.to_dict().items() if k not in ("layer_types", "max_window_layers")
    }
    return Qwen2_5_VLConfig(
        text_config={
            **text,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "vocab_size": 152064,
            "max_position_embeddings": 128000,
            **ids,
        },
        vision_config={
            **tiny.vision_config.to_dict(),
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "out_hidden_size": 3584,
            "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31],
        },
        image_token_id=tiny.image_token_id,
        video_token_id=tiny.video_token_id,
        vision_start_token_id=tiny.vision_start_token_id,
    )


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def random_photo(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A JPEG-worthy picture: a colour gradient with a few shapes (decodes like a photo of that size)."""
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        colour = tuple(rng.randrange(256) for _ in range(3))
        draw.ellipse([x, y, x + size[0] // 4, y + size[1] // 4], fill=colour)
    return image


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def vlguard_records(images: int, rng: random.Random) -> list[dict]:
    """VLGuard train records: the real train.json (first `images` records) when the project's shared folder
    is there, else synthetic records with its mix (about half unsafe images with one pair, half safe
    images with a safe and an unsafe instruction)."""
    if SHARED_VLGUARD.is_file():
        records = json.loads(SHARED_VLGUARD.read_text())[:images]
        if len(records) == images:
            return records
    records = []
    for index in range(images):
        response = sentence(rng, 60)
        if index % 2:
            pairs = [{"instruction": sentence(rng, 25), "response": response}]
            extra = {"harmful_category": "privacy", "harmful_subcategory": "personal data"}
        else:
            pairs = [
                {"safe_instruction": sentence(rng, 25), "response": response},
                {"unsafe_instruction": sentence(rng, 25), "response": sentence(rng, 30)},
            ]
            extra = {}
        records.append(
            {
                "id": f"img{index}",
                "image": f"synthetic/{index}.jpg",
                "safe": not index % 2,
                "instr-resp": pairs,
            }
            | extra
        )
    return records


def write_vlguard_train(out_dir: Path, images: int, seed: int = 0) -> Path:
    """A VLGuard folder in the Hub layout (train.json + train.zip of 400-1000 px JPEGs under train/)."""
    rng = random.Random(seed)
    records = vlguard_records(images, rng)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "train.json").write_text(json.dumps(records), encoding="utf-8")
    with zipfile.ZipFile(out_dir / "train.zip", "w", compression=zipfile.ZIP_STORED) as archive:
        for path in dict.fromkeys(record["image"] for record in records):  # records may share an image
            size = (rng.randint(400, 1000), rng.randint(400, 1000))
            archive.writestr(f"train/{path}", jpeg_bytes(random_photo(rng, size)))
    return out_dir
