"""The import graph: every file imports only what sits below it (no circles, not even through a function-level
import), and the ground floor (config, checkpoint I/O, DDP, data, training helpers) knows no model."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUND = {"config", "checkpoints", "ddp", "data", "optim"}
MODELS = {"tokenizer", "bert", "maskbit", "maskgit", "teacher", "generator"}


def local_imports():
    """{module: set of this repository's modules it imports anywhere in the file}."""
    names = {f[:-3] for f in os.listdir(ROOT) if f.endswith(".py")}
    graph = {}
    for name in names:
        tree = ast.parse(open(os.path.join(ROOT, name + ".py")).read())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
        graph[name] = (found & names) - {name}
    return graph


def test_import_graph_is_acyclic():
    graph, order, state = local_imports(), [], {}

    def visit(name, path):
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", "import circle: " + " -> ".join(path + [name])
        state[name] = "open"
        for dep in sorted(graph[name]):
            visit(dep, path + [name])
        state[name] = "done"
        order.append(name)
    for name in sorted(graph):
        visit(name, [])
    assert order.index("tokenizer") < order.index("teacher") < order.index("generator") < order.index("distill") \
        < order.index("soft_refine") < order.index("tteo")
    assert graph["masking"] == {"config"}, "the masking maths sits one floor below every model"


def test_the_ground_floor_knows_no_model_and_no_model_its_trainer():
    graph = local_imports()
    for name in GROUND:
        assert not graph[name] & (MODELS | {"train", "distill"}), f"{name} imports {graph[name]}"
    for name in MODELS:
        assert "train" not in graph[name] and "distill" not in graph[name], f"{name} imports {graph[name]}"
