"""What each process may import, and one-line failures at worker start."""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def python(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("LONGSONG_", "TEMPORAL_"))}
    full.update(env)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=120)


def test_workflow_code_imports_nothing_heavy():
    run = python("import sys, longsong.workflows, longsong.workflows.messages; "
                 "print(sorted(m for m in ('numpy', 'torch', 'transformers', 'ffmpeg', 'scipy') if m in sys.modules))")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_cpu_worker_needs_no_gpu_extras():
    run = python("import sys, worker_cpu, longsong.activities.finish, longsong.cli, longsong.client; "
                 "print('torch' in sys.modules, 'transformers' in sys.modules)")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False False"


def test_cpu_worker_without_ffmpeg_fails_in_one_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "worker_cpu"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "IMAGEIO_FFMPEG_EXE": str(tmp_path / "no-ffmpeg"),
                              "LONGSONG_HOME": str(tmp_path)})
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "ffmpeg" in run.stderr and "imageio-ffmpeg" in run.stderr


def test_gpu_worker_with_unknown_engine_fails_in_one_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "worker_gpu"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "LONGSONG_ENGINES": "procedural,suno", "LONGSONG_HOME": str(tmp_path)})
    assert run.returncode == 2
    assert run.stderr.strip() == "worker_gpu: LONGSONG_ENGINES: unknown engine 'suno' (allowed: procedural, musicgen)"


def test_bad_storage_url_fails_worker_start(tmp_path):
    run = subprocess.run([sys.executable, "-m", "worker_cpu"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "LONGSONG_STORAGE": "ftp://nowhere/x", "LONGSONG_HOME": str(tmp_path)})
    assert run.returncode == 2 and "LONGSONG_STORAGE" in run.stderr and "\n" not in run.stderr.strip()


def module_imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports at module level (imports inside functions are deferred on purpose);
    `from pkg import submodule` counts as the submodule."""
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("longsong"):
            for alias in node.names:
                out.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("longsong"))
    return out


def package_modules() -> dict[str, Path]:
    """Every module of the installed package, by name (top-level workflows/ and activities/ included)."""
    roots = {"longsong": ROOT / "longsong", "longsong.workflows": ROOT / "workflows",
             "longsong.activities": ROOT / "activities"}
    modules = {}
    for prefix, folder in roots.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((prefix, *parts))
            modules[name.removesuffix(".__init__")] = path
    return modules


def test_no_import_cycles():
    modules = package_modules()
    graph = {name: {m for m in module_imports(path, set(modules)) if m in modules and m != name}
             for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, trail + [dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_module_outgrows_one_idea():
    long = {name: n for name, path in package_modules().items() if (n := len(path.read_text().splitlines())) > 420}
    assert not long, f"split these modules by concern: {long}"


def test_readme_folder_table_matches_the_tree():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| folder / file |"):readme.index("## CLI")]
    for folder in ("workflows", "activities", "benchmarks", "deploy", "tests"):
        assert f"`{folder}/`" in table
    for path in sorted((ROOT / "longsong").rglob("*")):
        if path.is_dir() and path.name != "__pycache__":
            assert f"`{path.relative_to(ROOT).as_posix()}/`" in table or f"`{path.name}/`" in table, path
        elif path.suffix == ".py" and path.name != "__init__.py":
            assert path.stem in table, f"README's folder table does not mention {path.relative_to(ROOT)}"
    for path in [*(ROOT / "workflows").glob("*.py"), *(ROOT / "activities").glob("*.py")]:
        assert path.name == "__init__.py" or path.name in table, path
