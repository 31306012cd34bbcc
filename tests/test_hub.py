"""vlsafe.hub and vlsafe.publish against the loopback Hub: one-commit pushes of a trained adapter, loading it
back three ways, revisions, private repos, auth failures, retries, and the token kept out of every output."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import traceback
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from peft import PeftModel
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import ModelConfig, SFTConfig, TrlParser

from tests.conftest import REPO, run_checked
from tests.hub_server import FakeHub
from tests.test_cards import make_results
from vlsafe.cards import update_card
from vlsafe.errors import DataError, HubAccessError, VlsafeError
from vlsafe.hub import load_adapter, publishable_files, push_to_hub
from vlsafe.publish import PublishArguments
from vlsafe.publish import main as publish_main
from vlsafe.training import DatasetRef, build_sft_trainer, dataset_entry, take_over_hub_push

TOKEN = "hf_vlsafe_FAKE_token_5f3a9c0d"  # alice's write token; must never show up in anything vlsafe writes
BASE = "outputs/demo/fixtures/tiny-llava"
ADAPTER = "outputs/demo/sft_vlguard"
PUBLISHED = {
    ".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja",
    "processor_config.json", "results.json", "results.png", "tokenizer.json", "tokenizer_config.json",
    "training_summary.json",
}  # fmt: skip


@pytest.fixture
def hub(hub_server: FakeHub, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    """The loopback Hub with user alice (member of safety-org), logged in through HF_TOKEN."""
    hub_server.add_user("alice", TOKEN, orgs={"safety-org"})
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return hub_server


@pytest.fixture
def adapter(demo_run: Path, tmp_path: Path) -> Path:
    """A copy of the demo adapter, evaluated: results.json + results.png next to its card."""
    folder = shutil.copytree(demo_run / ADAPTER, tmp_path / "sft_vlguard")
    update_card(folder, make_results(tmp_path / "eval", str(folder), plot=True))
    return folder


def _commits(hub: FakeHub) -> list[str]:
    return [path for method, path, _ in hub.requests if method == "POST" and "/commit/" in path]


def _inputs(processor) -> dict[str, torch.Tensor]:
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown here?"}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(images=[Image.new("RGB", (32, 32), (200, 20, 20))], text=[text], return_tensors="pt")


@torch.no_grad()
def _logits(model, inputs) -> torch.Tensor:
    return model.eval()(**inputs).logits


@pytest.mark.slow  # uses the trained demo adapter
def test_round_trip_loads_three_ways_with_the_local_logits(
    hub: FakeHub, demo_run: Path, adapter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    push_to_hub(demo_run / BASE, "alice/tiny-llava")
    local_config = (adapter / "adapter_config.json").read_text()
    result = push_to_hub(adapter, "alice/tiny-vlguard", base_model_repo="alice/tiny-llava")

    repo = hub.repos[("model", "alice/tiny-vlguard")]
    assert result.commit == repo.sha and len(repo.history()) == 2  # created, then one commit with everything
    assert set(repo.files()) == PUBLISHED  # no pickles (training_args.bin), no checkpoints
    assert repo.files()["adapter_model.safetensors"].lfs
    pushed_config = json.loads(repo.files()["adapter_config.json"].data)
    assert pushed_config["base_model_name_or_path"] == "alice/tiny-llava"
    assert (adapter / "adapter_config.json").read_text() == local_config  # the local folder is untouched
    card = ModelCard(repo.files()["README.md"].data.decode())
    assert card.data.base_model == "alice/tiny-llava" and card.data.eval_results
    assert 'from_pretrained("alice/tiny-vlguard")' in card.text

    processor = AutoProcessor.from_pretrained(adapter)
    inputs = _inputs(processor)
    monkeypatch.chdir(demo_run)  # the local adapter names its base by the path training was given
    expected = _logits(AutoModelForImageTextToText.from_pretrained(adapter), inputs)
    base_only = _logits(AutoModelForImageTextToText.from_pretrained(BASE), inputs)
    assert not torch.allclose(expected, base_only)  # the adapter changes the output: the check can fail
    monkeypatch.chdir(adapter.parent)  # from here on, nothing local resolves: everything comes over HTTP

    hub.requests.clear()
    auto = AutoModelForImageTextToText.from_pretrained("alice/tiny-vlguard")
    torch.testing.assert_close(_logits(auto, inputs), expected)
    base = AutoModelForImageTextToText.from_pretrained("alice/tiny-llava")
    torch.testing.assert_close(
        _logits(PeftModel.from_pretrained(base, "alice/tiny-vlguard"), inputs), expected
    )
    model, hub_processor = load_adapter("alice/tiny-vlguard")
    assert hub_processor.chat_template == processor.chat_template
    hub_inputs = _inputs(hub_processor)
    assert torch.equal(hub_inputs["input_ids"], inputs["input_ids"])
    torch.testing.assert_close(_logits(model, hub_inputs), expected)
    downloaded = {path for method, path, _ in hub.requests if method == "GET"}
    assert any(path.endswith("/resolve/" + repo.sha + "/adapter_config.json") for path in downloaded)
    assert any(path.startswith("/lfs-objects/") for path in downloaded)  # weights via the LFS redirect


@pytest.mark.slow  # uses the trained demo adapter
def test_push_to_a_branch_of_a_private_repo(hub: FakeHub, demo_run: Path, adapter: Path) -> None:
    push_to_hub(demo_run / BASE, "safety-org/tiny-llava")
    result = push_to_hub(
        adapter,
        "safety-org/tiny-vlguard",
        private=True,
        revision="v1",
        base_model_repo="safety-org/tiny-llava",
    )
    repo = hub.repos[("model", "safety-org/tiny-vlguard")]
    assert repo.private and result.revision == "v1" and result.commit == repo.branches["v1"]
    assert list(repo.files("main")) == [".gitattributes"] and set(repo.files("v1")) == PUBLISHED

    with pytest.raises(HubAccessError, match="not found, or it is private"):  # anonymous, nothing cached yet
        load_adapter("safety-org/tiny-vlguard", revision="v1", token=False)
    model, processor = load_adapter("safety-org/tiny-vlguard", revision="v1")
    assert isinstance(model, PeftModel) and processor.chat_template
    with pytest.raises(VlsafeError, match="Revision 'v2' does not exist"):
        load_adapter("safety-org/tiny-vlguard", revision="v2")
    # A second push of the same folder is a no-op; a name without namespace goes to the token's user.
    again = push_to_hub(
        adapter, "safety-org/tiny-vlguard", revision="v1", base_model_repo="safety-org/tiny-llava"
    )
    assert again.commit == result.commit
    assert push_to_hub(adapter, "tiny-vlguard").repo_id == "alice/tiny-vlguard"


@pytest.mark.slow  # uses the trained demo adapter
def test_auth_failures_and_missing_repos_say_what_to_do(
    hub: FakeHub, adapter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(
        HubAccessError, match="may not create the repository.*bob/x.*HTTP 403.*namespace 'bob'"
    ):
        push_to_hub(adapter, "bob/x")
    with pytest.raises(HubAccessError, match="refused the credentials.*HTTP 401.*hf auth login"):
        push_to_hub(adapter, "alice/x", token="hf_not_a_valid_token")
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubAccessError, match="HTTP 401.*HF_TOKEN"):
        push_to_hub(adapter, "alice/x")
    assert not [key for key in hub.repos if key[1] in ("bob/x", "alice/x")] and not _commits(hub)
    with pytest.raises(HubAccessError, match="'alice/nothing-here' was not found"):
        load_adapter("alice/nothing-here")


@pytest.mark.slow  # uses the trained demo adapter
def test_a_failed_push_is_retried_and_never_half_written(hub: FakeHub, adapter: Path, caplog) -> None:
    hub.fail("POST", r"/commit/", status=503, times=1)
    with caplog.at_level(logging.WARNING, logger="vlsafe.hub"):
        first = push_to_hub(adapter, "alice/retry", retry_wait=0)
    assert "attempt 1 of 3" in caplog.text and "HTTP 503" in caplog.text
    repo = hub.repos[("model", "alice/retry")]
    assert len(_commits(hub)) == 2 and len(repo.history()) == 2 and set(repo.files()) == PUBLISHED

    (adapter / "notes.md").write_text("new file")
    hub.fail("POST", r"/commit/", status=500, times=None)  # the Hub stays down
    with pytest.raises(VlsafeError, match="after 3 attempt.*HTTP 500.*Nothing was committed"):
        push_to_hub(adapter, "alice/retry", retry_wait=0)
    hub.faults.clear()
    save_file({"w": torch.ones(4)}, adapter / "extra.safetensors")
    hub.fail("PUT", r"/lfs-objects/", status=400, times=None)  # storage refuses the new weights mid-push
    with pytest.raises(VlsafeError, match="HTTP 400.*Nothing was committed"):
        push_to_hub(adapter, "alice/retry", retry_wait=0)
    assert repo.sha == first.commit and set(repo.files()) == PUBLISHED  # no partial revision


@pytest.mark.slow  # uses the trained demo adapter
def test_the_token_never_appears_in_anything_vlsafe_writes(
    hub: FakeHub, demo_run: Path, adapter: Path, tmp_path: Path, caplog, capfd
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    push_to_hub(demo_run / BASE, "alice/tiny-llava")
    push_to_hub(adapter, "alice/tiny-vlguard", base_model_repo="alice/tiny-llava", private=True)
    load_adapter("alice/tiny-vlguard")
    hub.fail("POST", r"/commit/", status=500, times=None)
    (adapter / "notes.md").write_text("changed")
    for repo_id in ("bob/x", "alice/tiny-vlguard"):  # a 403 and an outage
        with pytest.raises(VlsafeError) as failure:
            push_to_hub(adapter, repo_id, retry_wait=0)
        errors.append(failure.value)
    with pytest.raises(HubAccessError) as wrong:  # an explicit (wrong) token is kept out of messages too
        push_to_hub(adapter, "alice/y", token="hf_wrong_" + TOKEN)
    errors.append(wrong.value)

    texts = [caplog.text, *capfd.readouterr()]
    texts += ["".join(traceback.format_exception(e)) + repr(e) for e in errors]
    texts += [
        p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*") if p.is_file()
    ]  # outputs, HF cache
    texts += [b.data.decode("latin-1") for repo in hub.repos.values() for c in repo.commits.values() for b in (c.files or {}).values()]  # fmt: skip
    assert texts and not [text[:200] for text in texts if TOKEN in text]

    (adapter / "notes.md").write_text(f"my token is {TOKEN}")  # a user slip: refused before any request
    hub.requests.clear()
    with pytest.raises(VlsafeError, match="notes.md contains your Hub token") as leak:
        push_to_hub(adapter, "alice/tiny-vlguard")
    assert TOKEN not in str(leak.value) and not hub.requests


@pytest.mark.slow  # uses the trained demo adapter
def test_only_safetensors_are_published_and_loaded(hub: FakeHub, adapter: Path, tmp_path: Path) -> None:
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(adapter / "adapter_config.json", pickled)
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(VlsafeError, match=r"no \.safetensors weights \(only \['adapter_model.bin'\]\)"):
        push_to_hub(pickled, "alice/pickled")
    hub.add_repo("alice/pickled", pickled, repo_type="model")  # someone else published a .bin adapter
    with pytest.raises(VlsafeError, match="has no adapter_model.safetensors; vlsafe loads safetensors only"):
        load_adapter("alice/pickled")
    with pytest.raises(VlsafeError, match="not a PEFT adapter"):
        load_adapter(tmp_path / "eval")
    with pytest.raises(VlsafeError, match="neither an existing folder nor a Hub repo id"):
        load_adapter(tmp_path / "no" / "such" / "adapter")
    (adapter / "training_args.bin").write_bytes(b"\x80\x04pickle")
    assert "training_args.bin" not in publishable_files(adapter)


@pytest.mark.slow  # uses the trained demo adapter
def test_publish_cli(hub: FakeHub, demo_run: Path, adapter: Path, capsys) -> None:
    argv = ["--folder", str(adapter), "--repo_id", "alice/cli", "--base_model_repo", "alice/tiny-llava",
            "--revision", "v2", "--commit_message", "Publish the demo adapter"]  # fmt: skip
    (args,) = TrlParser((PublishArguments,)).parse_args_and_config(args=argv)
    result = publish_main(args)
    assert "Published" in capsys.readouterr().out and result.revision == "v2"
    assert [c.title for c in HfApi().list_repo_commits("alice/cli", revision="v2")][
        0
    ] == "Publish the demo adapter"


@pytest.mark.slow  # uses the trained demo adapter
def test_trainer_push_is_taken_over(demo_run: Path) -> None:
    kwargs = {"output_dir": "unused", "use_cpu": True, "bf16": False, "report_to": "none"}
    args = SFTConfig(
        push_to_hub=True, hub_model_id="alice/run", hub_token=TOKEN, hub_private_repo=True, **kwargs
    )
    with pytest.raises(VlsafeError, match="take_over_hub_push"):
        build_sft_trainer(None, args, ModelConfig(model_name_or_path=str(demo_run / BASE)))
    target = take_over_hub_push(args)
    assert (target.repo_id, target.private, target.token) == ("alice/run", True, TOKEN)
    assert not args.push_to_hub and args.hub_token is None and TOKEN not in repr(target)
    assert take_over_hub_push(SFTConfig(**kwargs)) is None
    with pytest.raises(VlsafeError, match="set hub_model_id"):
        take_over_hub_push(SFTConfig(push_to_hub=True, **kwargs))


@pytest.mark.slow  # uses the trained demo adapter
def test_recipe_pushes_the_finished_folder_in_one_commit(
    hub: FakeHub, demo_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN")  # the token comes as the Trainer's --hub_token, as some users pass it
    out = tmp_path / "run"
    fixtures = demo_run / "outputs/demo/fixtures"
    result = run_checked(
        [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", str(REPO / "recipes/accelerate/cpu.yaml"),
         "--num_cpu_threads_per_process", "1", str(REPO / "recipes/sft_vlguard.py"),
         "--config", str(REPO / "recipes/configs/tiny/sft_vlguard.yaml"),
         "--model_name_or_path", str(fixtures / "tiny-llava"), "--dataset", str(fixtures / "vlguard"),
         "--helpful_dataset", str(fixtures / "helpful/data.json"), "--helpful_samples", "4", "--output_dir", str(out),
         "--max_steps", "2", "--per_device_train_batch_size", "2", "--save_strategy", "steps", "--save_steps", "1",
         "--license", "apache-2.0", "--push_to_hub", "true", "--hub_model_id", "alice/recipe-run", "--hub_token", TOKEN],
        cwd=tmp_path,
    )  # fmt: skip
    repo = hub.repos[("model", "alice/recipe-run")]
    assert len(_commits(hub)) == 1 and len(repo.history()) == 2  # one commit at the end, none per checkpoint
    files = repo.files()
    assert {"README.md", "training_summary.json", "adapter_model.safetensors", "chat_template.jinja"} <= set(
        files
    )
    assert not any(name.startswith("checkpoint-") or name.endswith(".bin") for name in files)
    card = ModelCard(files["README.md"].data.decode())
    assert "vlsafe" in card.data.tags and card.data.license == "apache-2.0"  # ours, not TRL's card
    assert json.loads(files["training_summary.json"].data)["hub_model_id"] == "alice/recipe-run"
    assert "local path" in result.stderr  # the base is a local folder: the push warns nobody can resolve it
    assert (out / "checkpoint-1").is_dir()  # the checkpoint pickles stay local and hold no token either
    leaked = [p for p in out.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert not leaked and TOKEN not in result.stdout + result.stderr


def test_summary_records_the_commit_a_hub_dataset_resolved_to(hub: FakeHub, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.json").write_text("[]")
    repo = hub.add_repo("ys-zong/VLGuard", tmp_path / "data", repo_type="dataset")
    entry = dataset_entry(DatasetRef("safety", "ys-zong/VLGuard", split="train"))
    assert entry == {
        "role": "safety",
        "source": "ys-zong/VLGuard",
        "split": "train",
        "resolved_revision": repo.sha,
    }
    missing = dataset_entry(DatasetRef("helpfulness", "someone/gone", revision="v1"))
    assert missing == {"role": "helpfulness", "source": "someone/gone", "revision": "v1"}  # best effort
    local = dataset_entry(DatasetRef("safety", str(tmp_path / "data")))
    assert "resolved_revision" not in local


# -- one loader for everyone (fast: a fresh LoRA on the tiny models, no trained adapter needed) -----------------
def _lora_adapter(
    base: Path, folder: Path, *, processor: bool = True, targets: tuple[str, ...] = ("q_proj", "v_proj")
) -> Path:
    """A LoRA adapter on the tiny model `base`, saved as training saves one, with lora_B set so it changes
    the model's output."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        AutoModelForImageTextToText.from_pretrained(base),
        LoraConfig(r=2, target_modules=list(targets)),
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.05)
    model.save_pretrained(folder)
    if processor:
        AutoProcessor.from_pretrained(base).save_pretrained(folder)
    return folder


def test_the_adapter_loader_attaches_checks_and_finds_the_processor(tiny_models, tmp_path: Path) -> None:
    from vlsafe.hub import attach_adapter, tuned_processor
    from vlsafe.modeling import load_model, load_processor

    llava, qwen = tiny_models["llava"], tiny_models["qwen2_5_vl"]
    adapter = _lora_adapter(llava, tmp_path / "adapter")
    processor = load_processor(str(llava))
    inputs = _inputs(processor)
    base_logits = _logits(load_model(str(llava)), inputs)
    model = attach_adapter(load_model(str(llava)), adapter, base_model=str(llava))
    assert isinstance(model, PeftModel) and not model.training
    assert not torch.allclose(_logits(model, inputs), base_logits)  # the adapter's weights are on
    trainable = attach_adapter(load_model(str(llava)), adapter, trainable=True)
    assert any(p.requires_grad for n, p in trainable.named_parameters() if "lora_" in n)

    projector = _lora_adapter(llava, tmp_path / "projector", targets=("linear_1",))  # LLaVA's projector only
    with pytest.raises(
        VlsafeError, match=rf"Adapter {projector} does not fit base model {qwen} .*base_model="
    ):
        attach_adapter(load_model(str(qwen)), projector, base_model=str(qwen))
    with pytest.raises(
        VlsafeError, match="trained with a LlavaProcessor .* Qwen2_5_VLProcessor .* does not fit"
    ):
        tuned_processor(adapter, load_processor(str(qwen)), base_model=str(qwen))
    assert tuned_processor(adapter, processor).chat_template == processor.chat_template
    bare = _lora_adapter(llava, tmp_path / "bare", processor=False)
    assert tuned_processor(bare, processor) is processor  # no processor saved: the base model's


def test_a_fully_fine_tuned_model_loads_as_the_model_itself(hub: FakeHub, tiny_models) -> None:
    """A folder of full weights (what use_peft false leaves), local or published, is the tuned model."""
    from vlsafe.hub import attach_adapter

    full = tiny_models["llava"]  # config.json + model.safetensors, no adapter_config.json
    model, processor = load_adapter(full)
    assert not isinstance(model, PeftModel) and not model.training
    assert type(processor).__name__ == "LlavaProcessor"
    with pytest.raises(VlsafeError, match="is a fully fine-tuned model .*not an adapter"):
        attach_adapter(model, full)

    push_to_hub(full, "alice/tiny-full")
    published, _ = load_adapter("alice/tiny-full")
    inputs = _inputs(processor)
    torch.testing.assert_close(_logits(published, inputs), _logits(model, inputs))


def test_an_adapter_on_the_hub_is_read_by_its_config_then_fetched_without_pickles(
    hub: FakeHub, tiny_models, tmp_path: Path
) -> None:
    from vlsafe.hub import adapter_base_model, model_folder

    adapter = _lora_adapter(tiny_models["llava"], tmp_path / "adapter")
    (adapter / "training_args.bin").write_bytes(b"\x80\x04pickle")
    hub.add_repo("alice/lora", adapter, repo_type="model")
    hub.requests.clear()
    assert adapter_base_model("alice/lora") == str(tiny_models["llava"])
    fetched = [path for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path]
    assert [path.rsplit("/", 1)[-1] for path in fetched] == ["adapter_config.json"]  # the config only
    folder = model_folder("alice/lora")
    assert (folder / "adapter_model.safetensors").is_file() and not (folder / "training_args.bin").exists()
    with pytest.raises(VlsafeError, match="Revision 'v9' does not exist in alice/lora") as missing:
        adapter_base_model("alice/lora", revision="v9")
    assert not isinstance(missing.value, DataError)  # a model repo: not a dataset problem


def test_network_failures_are_retried_through_huggingface_hubs_own_http_errors() -> None:
    from huggingface_hub.utils import httpx as hub_http

    from vlsafe.hub import _retryable

    try:
        try:
            raise hub_http.ConnectError("connection refused")
        except hub_http.ConnectError as cause:
            raise RuntimeError("upload failed") from cause
    except RuntimeError as wrapped:
        assert _retryable(wrapped)  # a network failure anywhere in the causes
    assert not _retryable(ValueError("bad metadata"))
