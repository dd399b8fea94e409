"""The package layering, checked on the source: a package imports only
packages on lower floors (or the few same-floor pairs listed), and never a
``_private`` name of another package. Imports are read with ``ast``, so the
check sees lazy imports inside functions too."""

import ast
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The allowed layering (ARCHITECTURE.md, "Packages"): a package may import
# any package on a lower floor. ``qsim`` alone is the top-level package
# (its __init__: the version).
FLOORS = {
    "qsim": 0,
    "qsim.distributed": 0,
    "qsim.configs": 0,
    "qsim.quant": 0,
    "qsim.nn": 0,
    "qsim.data": 0,
    "qsim.runs": 1,
    "qsim.models": 1,
    "qsim.shifts": 1,
    "qsim.results": 1,
    "qsim.evaluate": 2,
    "qsim.train": 2,
    "qsim.retrain": 3,
    "qsim.export": 3,
    "qsim.analysis": 3,
    "qsim.search": 3,
    "qsim.study": 4,
    "experiments": 5,
    "benchmarks": 5,
}
# Imports within one floor that are allowed (importer, imported); any other
# same-floor import fails, so evaluate and train in particular never import
# each other.
SAME_FLOOR = {
    ("qsim.nn", "qsim.quant"),  # layers take their numerics from the quant package
    ("qsim.data", "qsim.distributed"),  # a process reads its own block of a set
    ("qsim.runs", "qsim.models"),  # opening a run builds the model its config names
    ("qsim.results", "qsim.runs"),  # report files are written atomically
    ("qsim.retrain", "qsim.search"),  # retraining's 'search' strategy adds the disagreement search's finds
    ("benchmarks", "experiments"),  # a benchmark trains its checkpoint with an experiment config
}


def _package(module: str) -> str:
  parts = module.split(".")
  if parts[0] != "qsim":
    return parts[0]
  return "qsim" if len(parts) == 1 else f"qsim.{parts[1]}"


def _sources():
  for top in ("qsim", "experiments", "benchmarks"):
    for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
      for f in sorted(files):
        if f.endswith(".py"):
          path = os.path.join(dirpath, f)
          module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
          yield path, module


def _imports(tree: ast.AST):
  """(imported package, imported name or None, line) for every qsim,
  experiments or benchmarks import; ``from qsim import data`` is the package
  qsim.data. Also (package, attribute, line) for ``alias._name`` where alias
  is an imported module."""
  aliases = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if _package(a.name) in FLOORS:
          aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
          yield _package(a.name), None, node.lineno
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _package(node.module) in FLOORS:
      for a in node.names:
        sub = f"{node.module}.{a.name}"
        if node.module == "qsim" and _package(sub) in FLOORS:
          aliases[a.asname or a.name] = sub
          yield _package(sub), None, node.lineno
        else:
          if a.name[:1].islower() and os.path.exists(os.path.join(ROOT, *sub.split(".")) + ".py"):
            aliases[a.asname or a.name] = sub  # a module imported by name
          yield _package(node.module), a.name, node.lineno
  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
      yield _package(aliases[node.value.id]), node.attr, node.lineno


def _violations():
  out = []
  for path, module in _sources():
    importer = _package(module)
    assert importer in FLOORS, f"{module}: package {importer} has no floor in FLOORS; add it"
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    where = os.path.relpath(path, ROOT)
    for target, name, line in _imports(tree):
      if target == importer:
        continue
      assert target in FLOORS, f"{where}:{line}: package {target} has no floor in FLOORS; add it"
      if FLOORS[target] > FLOORS[importer] or (
          FLOORS[target] == FLOORS[importer] and (importer, target) not in SAME_FLOOR
      ):
        out.append(f"{where}:{line}: {importer} (floor {FLOORS[importer]}) imports {target} (floor {FLOORS[target]})")
      if name and name.startswith("_") and not name.startswith("__"):
        out.append(f"{where}:{line}: {importer} uses {target}'s private name {name}")
  return sorted(set(out))


def test_packages_import_only_lower_floors_and_public_names():
  bad = _violations()
  assert not bad, "layering violations:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "source,expected",
    [
        ("from qsim.train.loop import train", "qsim.evaluate (floor 2) imports qsim.train (floor 2)"),
        ("from qsim import study", "qsim.evaluate (floor 2) imports qsim.study (floor 4)"),
        ("from qsim.runs import _tmp", "uses qsim.runs's private name _tmp"),
        ("from qsim.retrain import report\nreport._fmt(1, 2)", "uses qsim.retrain's private name _fmt"),
    ],
)
def test_the_check_catches_violations(source, expected, monkeypatch, tmp_path):
  for d in ("evaluate", "retrain"):
    (tmp_path / "qsim" / d).mkdir(parents=True)
  (tmp_path / "qsim" / "retrain" / "report.py").write_text("")
  (tmp_path / "qsim" / "evaluate" / "bad.py").write_text(source)
  monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
  assert any(expected in v for v in _violations())


def test_bit_width_names_are_parsed_in_one_function():
  """Issue 18: a ``wXaY`` name is read back into bits by
  ``qsim.quant.presets.parse_bits`` only (presets; reports read the rows' fields); built by
  ``bits_name`` (one config-file shorthand aside, which imports no library)."""
  import re
  from qsim.quant import bits_name, parse_bits

  hits = []
  for top in ("qsim", "experiments"):
    for d, _, files in os.walk(os.path.join(ROOT, top)):
      for f in files:
        if f.endswith(".py"):
          text = open(os.path.join(d, f)).read()
          hits += [os.path.relpath(os.path.join(d, f), ROOT) for _ in re.finditer(r"w\(\\d\+\)", text)]
  assert hits == [os.path.join("qsim", "quant", "presets.py")], hits
  assert [parse_bits(bits_name(w, a)) for w, a in [(4, 8), (2, None), (16, 16)]] == [(4, 8), (2, None), (16, 16)]
  assert parse_bits("tflite_int8") is None and parse_bits("w4a") is None and parse_bits(None) is None


def _returns_value(fn) -> bool:
  if fn.returns is not None and not (isinstance(fn.returns, ast.Constant) and fn.returns.value is None):
    return True
  inner = {
      id(n) for f in ast.walk(fn) if f is not fn and isinstance(f, (ast.FunctionDef, ast.Lambda)) for n in ast.walk(f)
  }
  return any(
      isinstance(n, ast.Return)
      and id(n) not in inner
      and not (n.value is None or isinstance(n.value, ast.Constant) and n.value.value is None)
      for n in ast.walk(fn)
  )


def _docstring_gaps(tree) -> list[tuple[int, str, str]]:
  """(line, name, what is missing) for each public function and public method
  of a public class in a module: a docstring, ``Args:`` when it takes
  arguments, ``Returns:``/``Yields:`` when it returns a value (properties
  and ``_private`` names exempt)."""
  items = [(n.name, n) for n in tree.body if isinstance(n, ast.FunctionDef)]
  for c in tree.body:
    if isinstance(c, ast.ClassDef) and not c.name.startswith("_"):
      items += [(f"{c.name}.{m.name}", m) for m in c.body if isinstance(m, ast.FunctionDef)]
  out = []
  for name, fn in items:
    decorators = {getattr(d, "id", getattr(d, "attr", "")) for d in fn.decorator_list}
    if name.split(".")[-1].startswith("_") or decorators & {"property", "cached_property"}:
      continue
    doc = ast.get_docstring(fn) or ""
    args = [a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs if a.arg not in ("self", "cls")]
    args += [a.arg for a in (fn.args.vararg, fn.args.kwarg) if a is not None]
    for missing, gap in (
        ("a docstring", not doc),
        ("Args:", args and "Args:" not in doc),
        ("Returns:", _returns_value(fn) and "Returns:" not in doc and "Yields:" not in doc),
    ):
      if gap:
        out.append((fn.lineno, name, missing))
  return out


def test_every_public_function_has_a_google_style_docstring():
  """Issue 18: every public function of ``qsim`` (modules whose name starts
  with '_' are private: ``quant/_aqt.py``, ``shifts/_ops.py``) documents its
  arguments and what it returns, Google style."""
  gaps = []
  for path, module in _sources():
    if module.split(".")[0] == "qsim" and not module.split(".")[-1].startswith("_"):
      gaps += [
          f"{module}:{line} {name}: no {what}" for line, name, what in _docstring_gaps(ast.parse(open(path).read()))
      ]
  assert not gaps, "\n".join(gaps)


def test_the_docstring_check_catches_gaps():
  source = '''
def documented(x):
  """Doubles.

  Args:
    x: a number.

  Returns:
    2x.
  """
  return 2 * x


def no_returns(x):
  """Doubles.

  Args:
    x: a number.
  """
  return 2 * x


def no_args(x) -> None:
  """Prints."""


class Public:
  def method(self):
    return 1

  @property
  def value(self):
    return 1
'''
  assert [(n, w) for _, n, w in _docstring_gaps(ast.parse(source))] == [
      ("no_returns", "Returns:"),
      ("no_args", "Args:"),
      ("Public.method", "a docstring"),
      ("Public.method", "Returns:"),
  ]
