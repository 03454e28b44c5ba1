"""Security hygiene of the shipped code: no pickle, nothing handed to a shell."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = sorted([*ROOT.glob("vec2face_tf/**/*.py"), *ROOT.glob("train/*.py"),
                  *ROOT.glob("export/*.py")])
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "shelve", "marshal"}


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def test_the_scan_sees_the_package():
    assert len(SHIPPED) > 40
    assert ROOT / "vec2face_tf/training/trainer.py" in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_pickle_and_no_shell(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names = {(node.module or "").split(".")[0]}
        else:
            continue
        assert not names & UNSAFE_MODULES, f"{path}:{node.lineno} imports {names}"
    for call in calls(tree):
        name = dotted(call.func)
        assert name not in {"os.system", "os.popen", "subprocess.getoutput",
                            "subprocess.getstatusoutput"}, f"{path}:{call.lineno} {name}"
        for keyword in call.keywords:
            if keyword.arg == "shell":
                assert isinstance(keyword.value, ast.Constant) and not keyword.value.value, \
                    f"{path}:{call.lineno} passes shell={ast.unparse(keyword.value)}"
            if keyword.arg == "allow_pickle":
                assert isinstance(keyword.value, ast.Constant) and not keyword.value.value, \
                    f"{path}:{call.lineno} loads with allow_pickle={ast.unparse(keyword.value)}"
        if name in {"np.load", "numpy.load"}:
            assert any(k.arg == "allow_pickle" for k in call.keywords), \
                f"{path}:{call.lineno} np.load without allow_pickle=False"
