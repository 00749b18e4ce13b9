"""Stage 4, legalize: convert the input dialect to IREE's (iree-compile --compile-to=input,
target-independent), then walk the result and fail with the ops IREE cannot take. Where
iree-compile fails without naming an op (a crash), each kind of op is compiled alone to find it.

float64: iree-compile's input phase demotes f64 to f32 by default, yet keeps an f64 argument's
or result's buffer type, so such a module fails at run ("buffer view byte length 8 exceeds
backing buffer byte length 4", iree-base-compiler 3.13.0). A model whose entry takes or
returns f64 is legalized again with f64 kept (KEEP_F64): its program says f64, llvm-cpu and
vmvx run it. A model with f64 inside only keeps the demotion, which every backend runs (a GPU
may have no f64). legalize.json says which ("f64_kept")."""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from pipeline.stage import Stage, StageError
from stages import frameworks
from stages.importer import STAGE as IMPORT
from stages.iree_tools import compile_failure, iree_compile, iree_opt
from stages.mlir import entry_inputs, op_names, parse, public_functions

HERE = Path(__file__).parent

# dialects IREE lowers from the input phase on; anything else left is an input-dialect op
# (torch.*, stablehlo.*, tosa.*, ...) that input conversion could not legalize
IREE_DIALECTS = {"builtin", "func", "util", "hal", "flow", "stream", "arith", "math", "linalg",
                 "tensor", "scf", "cf", "complex", "iree_linalg_ext", "iree_tensor_ext",
                 "iree_encoding", "affine", "bufferization", "ml_program", "io_parameters"}
ILLEGAL = re.compile(r"failed to legalize operation '([\w.]+)'(?:.*?<\{name = \"([\w.]+)\"\}>)?")
KEEP_F64 = "--iree-input-demote-f64-to-f32=false"
_ABI_OPS = ("hal.tensor.import", "hal.tensor.export")


class Legalize(Stage):
    name = "legalize"
    doc = "convert to IREE's input dialect (target-independent); name any op IREE cannot take"
    inputs = (IMPORT.name,)
    code = (HERE / "iree_tools.py", HERE / "mlir.py")

    def outputs(self, model):
        return ("legalized.mlirbc", "legalize.json")

    def tools(self, model):
        return ("iree-compile",)

    def key_params(self, model, target):
        return {"input_type": frameworks.get(model.framework).input_type}

    def run(self, ctx):
        adapter = frameworks.get(ctx.model.framework)
        source = ctx.inputs[IMPORT.name] / "imported.mlirbc" if IMPORT.name in ctx.inputs \
            else Path(ctx.model.sources["model"])
        out = ctx.out / "legalized.mlirbc"
        flags = [f"--iree-input-type={adapter.input_type}", "--compile-to=input",
                 "--emit-mlir-bytecode"]
        module, ops = _legalized(source, out, flags, ctx)
        f64_kept = _f64_at_entry(module)
        if f64_kept:
            ctx.log(f"legalize: the entry takes or returns f64, which the demotion to f32 would "
                    f"break at run; legalized again with {KEEP_F64}")
            module, ops = _legalized(source, out, [*flags, KEEP_F64], ctx)
        entries = [f for f in public_functions(module) if not f.endswith("$async")]
        if not entries:
            raise StageError("the imported module has no public function to run")
        (ctx.out / "legalize.json").write_text(json.dumps(
            {"entry": entries[0], "functions": entries,
             "inputs": entry_inputs(module, entries[0],
                                    lambda: parse(source.read_bytes(), source=source)),
             "ops": dict(sorted(ops.items())), "f64_kept": f64_kept},
            indent=1, sort_keys=True))


def _legalized(source: Path, out: Path, flags: list[str], ctx):
    """(the module compiled from source to the input phase at out, its op counts); fail naming
    the ops IREE cannot take."""
    try:
        iree_compile(source, out, flags, ctx)
        if ctx.target is not None and ctx.target.toolchain is not None:
            # another release's bytecode, which kiln's bindings may not read (3.11.0's often
            # not): printed as text by that release's iree-opt, its resources with it
            # (iree-compile's own text leaves them out), for the parse below and emit
            # (relegalize, docs/DESIGN.md §11.1)
            text = out.with_suffix(".mlir")
            iree_opt(out, text, [], ctx, ctx.target.toolchain)
            text.replace(out)
    except StageError as err:
        illegal = sorted({b or a for a, b in ILLEGAL.findall("\n".join(ctx.log_lines))})
        if illegal:
            raise StageError(f"ops IREE cannot legalize: {', '.join(illegal)}",
                             command=err.command, exit_code=err.exit_code) from None
        # a crash, or a diagnostic at no location (imports strip them): find the op
        alone = _failing_alone(source, flags, ctx)
        if alone:
            raise StageError(f"ops IREE cannot legalize: {', '.join(alone)} (each fails "
                             f"compiled alone too, see the log); {err}",
                             command=err.command, exit_code=err.exit_code) from None
        raise
    # (ops of a dialect IREE does not know pass through iree-compile in generic form:
    # read them, to name them below)
    module = parse(out.read_bytes(), unregistered=True)
    ops = op_names(module)
    illegal = sorted(n for n in ops if n.split(".", 1)[0] not in IREE_DIALECTS)
    if illegal:
        raise StageError(f"ops IREE cannot legalize: {', '.join(illegal)}")
    return module, ops


def _f64_at_entry(module) -> bool:
    """Whether a buffer the module takes or returns holds f64 (a hal.tensor.import's or
    export's encoding: `tensor<f64> as tensor<f32>` after the demotion)."""
    from iree.compiler import ir
    found = []

    def visit(op):
        if op.name in _ABI_OPS and any(
                "f64" in str(op.attributes[name]) for name in ("source_encoding", "target_encoding")
                if name in op.attributes):
            found.append(op.name)
            return ir.WalkResult.INTERRUPT
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    return bool(found)


# When iree-compile fails on a module without naming an op, each kind of input op is compiled
# alone: all its instances in a module of their own, fed by new arguments, with the constants
# they read copied in. The kinds that fail alone are the ones to name.
TENSOR = re.compile(r"(!torch\.v?)?tensor<")
FUNCTION_ATTRS = {"sym_name", "function_type", "arg_attrs", "res_attrs", "sym_visibility"}


def _failing_alone(source: Path, flags: list[str], ctx) -> list[str]:
    from iree.compiler import ir
    failing = []
    try:
        module = parse(source.read_bytes())
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "alone.mlirbc"
            for kind, ops in _input_ops(module).items():
                alone = _isolated(module, ops)
                try:
                    alone.operation.verify()
                except ir.MLIRError:   # it reads something that cannot come along: no verdict
                    continue
                with open(path, "wb") as f:
                    alone.operation.write_bytecode(f)
                failure = compile_failure(path, flags,
                                          release=ctx.target and ctx.target.toolchain)
                ctx.log(f"compiled alone, {kind} ({len(ops)} in the model): "
                        f"{failure or 'compiles'}")
                if failure:
                    failing.append(kind)
    except Exception as err:   # only a diagnosis: it must never hide the module's own error
        ctx.log(f"could not compile the ops alone: {type(err).__name__}: {err}")
    return failing


def _input_ops(module) -> dict[str, list]:
    """Each kind of input-dialect op that computes tensors from operands: [(function, op)]."""
    found: dict[str, list] = {}
    for function in module.body.operations:
        function = function.operation
        if not function.name.endswith(".func") or not function.regions:
            continue
        for block in function.regions[0].blocks:
            for op in block.operations:
                op = op.operation
                if (op.name.split(".", 1)[0] not in IREE_DIALECTS and op.operands
                        and any(TENSOR.match(str(r.type)) for r in op.results)):
                    found.setdefault(_kind(op), []).append((function, op))
    return found


def _kind(op) -> str:
    """An op's name; for ONNX's generic torch.operator, the ONNX op it holds (onnx.Unique)."""
    from iree.compiler import ir
    if op.name == "torch.operator" and "name" in op.attributes:
        return ir.StringAttr(op.attributes["name"]).value
    return op.name


def _isolated(module, ops):
    from iree.compiler import ir
    with module.context, ir.Location.unknown():
        alone = ir.Module.create()
        for name in module.operation.attributes:
            alone.operation.attributes[name] = module.operation.attributes[name]
        with ir.InsertionPoint(alone.body):
            for declaration in module.body.operations:   # globals the ops may read
                if not declaration.operation.name.endswith(".func"):
                    declaration.operation.clone()
            for i, (function, op) in enumerate(ops):
                _isolated_function(f"alone{i}", function, op)
    return alone


def _isolated_function(name: str, function, op) -> None:
    """func @name running op alone: a tensor it reads becomes an argument, unless a constant
    (an op without operands) makes it; what else it reads (ints, lists) is copied in."""
    from iree.compiler import ir
    from iree.compiler.dialects import func
    results = [r for r in op.results if TENSOR.match(str(r.type))]
    new = func.FuncOp(name, ir.FunctionType.get([], []))
    for attr in function.attributes:   # e.g. the ONNX opset its conversion depends on
        if attr not in FUNCTION_ATTRS:
            new.attributes[attr] = function.attributes[attr]
    block = new.add_entry_block()
    mapping, inputs = {}, []

    def value(v):
        if v not in mapping:
            owner = v.owner
            if isinstance(owner, ir.Block) or (TENSOR.match(str(v.type))
                                               and owner.operation.operands):
                mapping[v] = block.add_argument(v.type, ir.Location.unknown())
                inputs.append(v.type)
            else:
                copy(owner.operation)
        return mapping[v]

    def copy(original):
        operands = [value(v) for v in original.operands]
        clone = original.clone()
        for i, v in enumerate(operands):
            clone.operands[i] = v
        mapping.update(zip(original.results, clone.results))

    with ir.InsertionPoint(block):
        copy(op)
        func.ReturnOp([mapping[r] for r in results])
    new.attributes["function_type"] = ir.TypeAttr.get(
        ir.FunctionType.get(inputs, [r.type for r in results]))


STAGE = Legalize()
