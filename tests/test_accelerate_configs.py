"""Every YAML in accelerate_configs/ must parse with accelerate's own config loader
(the one `accelerate launch --config_file` uses) and say what its name promises."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.utils import ComputeEnvironment, DistributedType

CONFIG_DIR = Path(__file__).resolve().parents[1] / "accelerate_configs"
YAMLS = sorted(CONFIG_DIR.glob("*.yaml")) + sorted(CONFIG_DIR.glob("*.yml"))

# file name -> facts it must state
EXPECTED = {
    "cpu_2proc.yaml": dict(
        distributed_type=DistributedType.MULTI_GPU, num_processes=2, num_machines=1,
        mixed_precision="no", use_cpu=False,
    ),
    "single_gpu.yaml": dict(
        distributed_type=DistributedType.NO, num_processes=1, num_machines=1,
        mixed_precision="bf16", use_cpu=False,
    ),
    "multi_gpu_8_bf16.yaml": dict(
        distributed_type=DistributedType.MULTI_GPU, num_processes=8, num_machines=1,
        mixed_precision="bf16", use_cpu=False,
    ),
    "multi_node_2x8.yaml": dict(
        distributed_type=DistributedType.MULTI_GPU, num_processes=16, num_machines=2,
        mixed_precision="bf16", use_cpu=False, main_process_port=29500,
    ),
    "fsdp.yaml": dict(
        distributed_type=DistributedType.FSDP, num_processes=8, num_machines=1,
        mixed_precision="bf16", use_cpu=False,
    ),
    "deepspeed_zero2.yaml": dict(
        distributed_type=DistributedType.DEEPSPEED, num_processes=8, num_machines=1,
        mixed_precision="bf16", use_cpu=False,
    ),
    "fsdp2_cpu_2proc.yaml": dict(
        distributed_type=DistributedType.FSDP, num_processes=2, num_machines=1,
        mixed_precision="no", use_cpu=False,
    ),
}


def _load(path: Path) -> ClusterConfig:
    cfg = load_config_from_file(str(path))
    assert isinstance(cfg, ClusterConfig), f"{path.name}: parsed as {type(cfg).__name__}"
    return cfg


def test_config_dir_holds_the_expected_files():
    names = {p.name for p in YAMLS}
    missing = set(EXPECTED) - names
    assert not missing, f"missing configs: {sorted(missing)}"


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_config_parses_with_accelerate(path: Path):
    cfg = _load(path)
    assert cfg.compute_environment == ComputeEnvironment.LOCAL_MACHINE
    assert isinstance(cfg.distributed_type, DistributedType)
    assert cfg.mixed_precision in {"no", "fp16", "bf16", "fp8"}
    assert isinstance(cfg.num_processes, int) and cfg.num_processes >= 1
    assert isinstance(cfg.num_machines, int) and cfg.num_machines >= 1
    assert 0 <= cfg.machine_rank < cfg.num_machines
    # processes split evenly over machines
    assert cfg.num_processes % cfg.num_machines == 0
    assert cfg.main_training_function == "main"
    # round-trips through accelerate's own serialiser
    assert ClusterConfig(**_reparse(cfg)).distributed_type == cfg.distributed_type


def _reparse(cfg: ClusterConfig) -> dict:
    d = dict(cfg.to_dict())
    return ClusterConfig.process_config(yaml.safe_load(yaml.safe_dump(d)))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_key_facts(name: str):
    cfg = _load(CONFIG_DIR / name)
    for field, want in EXPECTED[name].items():
        got = getattr(cfg, field)
        assert got == want, f"{name}: {field} = {got!r}, expected {want!r}"


@pytest.mark.parametrize(
    "path", [p for p in YAMLS if "cpu" in p.name.lower()], ids=lambda p: p.name
)
def test_cpu_configs_launch_two_processes(path: Path):
    # accelerate only forks workers (torchrun) on its multi-GPU and FSDP paths; the script then
    # runs them on CPU with gloo. A MULTI_CPU config would silently start a single process.
    cfg = _load(path)
    assert cfg.num_processes == 2
    assert cfg.distributed_type in (DistributedType.MULTI_GPU, DistributedType.FSDP)
    assert cfg.mixed_precision == "no" and cfg.use_cpu is False


def test_gpu_configs_do_not_use_cpu():
    for path in YAMLS:
        # launched as 2 torchrun workers that pick the CPU themselves
        if "cpu" in path.name.lower():
            continue
        assert _load(path).use_cpu is False, path.name


def test_multi_node_has_rendezvous_fields():
    cfg = _load(CONFIG_DIR / "multi_node_2x8.yaml")
    assert cfg.num_processes // cfg.num_machines == 8
    assert cfg.main_process_ip  # placeholder, overridden by the launcher
    assert cfg.machine_rank == 0
    assert cfg.rdzv_backend == "static"


def test_fsdp_fields():
    fsdp = _load(CONFIG_DIR / "fsdp.yaml").fsdp_config
    assert fsdp["fsdp_version"] == 1
    assert fsdp["fsdp_reshard_after_forward"] == "FULL_SHARD"
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    # exactly one class: accelerate raises for any listed class absent from the model
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "BertLayer"
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    # accelerate refuses cpu_ram_efficient_loading without sync_module_states
    if fsdp.get("fsdp_cpu_ram_efficient_loading"):
        assert fsdp.get("fsdp_sync_module_states") is True
    # every key is one `accelerate launch` understands
    from accelerate.commands.launch import launch_command_parser

    dests = {a.dest for a in launch_command_parser()._actions}
    unknown = [k for k in fsdp if k not in dests]
    assert not unknown, f"fsdp_config keys unknown to accelerate launch: {unknown}"


def test_fsdp2_cpu_fields():
    # what qa_core.hardware needs to run FSDP2 on CPU processes (see refuse_on_cpu)
    fsdp = _load(CONFIG_DIR / "fsdp2_cpu_2proc.yaml").fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_reshard_after_forward"] is True
    assert fsdp["fsdp_sync_module_states"] is False
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is False
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "BertLayer"
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    from accelerate.commands.launch import launch_command_parser

    dests = {a.dest for a in launch_command_parser()._actions}
    assert not [k for k in fsdp if k not in dests]


def test_fsdp_wrap_classes_exist_in_transformers():
    from transformers.models.bert import modeling_bert
    from transformers.models.distilbert import modeling_distilbert

    assert hasattr(modeling_bert, "BertLayer")
    assert hasattr(modeling_distilbert, "TransformerBlock")


def test_fsdp_wrap_class_can_be_overridden_for_distilbert():
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parser = launch_command_parser()
    base = ["--config_file", str(CONFIG_DIR / "fsdp.yaml")]
    args, _, _ = _validate_launch_command(parser.parse_args(base + ["x.py"]))
    assert args.use_fsdp and args.fsdp_transformer_layer_cls_to_wrap == "BertLayer"
    assert args.num_processes == 8 and args.mixed_precision == "bf16"
    over = base + ["--fsdp_transformer_layer_cls_to_wrap", "TransformerBlock", "x.py"]
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(over))
    assert args.fsdp_transformer_layer_cls_to_wrap == "TransformerBlock"


def test_deepspeed_fields():
    ds = _load(CONFIG_DIR / "deepspeed_zero2.yaml").deepspeed_config
    assert ds["zero_stage"] == 2
    assert ds["offload_optimizer_device"] == "none"
    assert ds["offload_param_device"] == "none"
    # left to the training script ("auto" in the DeepSpeed plugin); setting them here
    # would conflict with Accelerator(gradient_accumulation_steps=...)
    assert "gradient_accumulation_steps" not in ds
    assert "gradient_clipping" not in ds
    assert "deepspeed_config_file" not in ds
    from accelerate.commands.launch import launch_command_parser

    dests = {a.dest for a in launch_command_parser()._actions}
    unknown = [k for k in ds if k not in dests]
    assert not unknown, f"deepspeed_config keys unknown to accelerate launch: {unknown}"


def test_no_mixed_precision_on_cpu_or_none_are_strings():
    # YAML 1.1 would read a bare `no` as False; accelerate needs the string "no"
    for path in YAMLS:
        raw = yaml.safe_load(path.read_text())
        assert isinstance(raw["mixed_precision"], str), path.name
        assert isinstance(raw["distributed_type"], str), path.name
