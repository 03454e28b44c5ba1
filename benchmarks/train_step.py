r"""How close the cpu64 train step is to this CPU's limit, side by side in one run (issue 6).

  python benchmarks/train_step.py --out=benchmarks/results/train_step.json
  python benchmarks/train_step.py --quick            # < 2 min sanity run
  python benchmarks/train_step.py --timed_steps=10   # steadier figures, longer run

Measures, in one process (thread settings in child processes, because TF fixes its thread
pools when its runtime starts):

1. Ceilings: fp32 (and bf16) ``tf.matmul`` and a 3x3 ``tf.nn.conv2d``, in GFLOP/s.
2. FLOPs per step counted from the traced graphs with TF's profiler (``float_operation``):
   the stage-2 D step and G step (split at the D optimizer's update inside one traced
   ``DiBiGAN.train_step``) and the stage-1 flow+student step; plus op types the profiler
   leaves uncounted.
3. Images/s and achieved GFLOP/s of: the same ``train_step`` run eagerly (naive baseline),
   the real ``fit`` path, and each lever (XLA, steps_per_execution, mixed bfloat16, the
   two-forward step that the shared generator forward replaced, thread settings).
4. The tf.data pipeline alone against what the step consumes.
5. The student refresh's share of wall time at the cpu64 schedule.

Prints tables and the goals (step >= 40% of the matmul ceiling, >= 3x the eager loop,
tf.data >= 5x the step's consumption) and writes JSON.
"""

import os
import platform
import subprocess
import sys
import time

import faces  # benchmarks/ is on sys.path when run as a script
from absl import app, flags
from results_io import write_results

_QUICK = flags.DEFINE_bool("quick", False, "Sanity run (< 2 min): small ceilings, stage 2 only, "
                           "one timed step, no levers.")
_ROUNDS = flags.DEFINE_integer("rounds", 4, "Interleaved timing rounds: one timed step (one "
                               "execution) of every variant per round; medians reported.",
                               lower_bound=1)
_LEVERS = flags.DEFINE_list("levers", ["xla", "spe", "bf16", "two_g", "threads"],
                            "Levers to time: xla, spe, bf16, two_g (the step before one "
                            "generator forward served D and G), threads (three child "
                            "processes), xla_stage1.")
_STAGE1 = flags.DEFINE_bool("stage1", True, "Time stage 1 (flow + student) too.")
_PROFILE_DIR = flags.DEFINE_string("profile_dir", None, "If set, trace one fit step of each "
                                   "stage with tf.profiler and print the top ops by time.")
_OUT = flags.DEFINE_string("out", None, "Write the results as JSON here.")
_CHILD_THREADS = flags.DEFINE_string("child_threads", None, "Internal: 'intra,inter'; time the "
                                     "stage-2 fit step only and print one JSON line.")

_PRESET = "cpu64"
_STEPS_PER_EXECUTION = 2
_THREAD_SETTINGS = ((0, 0), (2, 1), (1, 2))  # (intra, inter); 0 is TF's default.
_GOAL_CEILING_SHARE, _GOAL_EAGER_SPEEDUP, _GOAL_DATA_HEADROOM = 0.40, 3.0, 5.0


# ---------------------------------------------------------------------------------------------
# Ceilings.

def _best_seconds(call, repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``call``, after one warm-up call."""
    call()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def _rate(call, flop: float, repeats: int) -> float:
    """GFLOP/s of ``call``, from its best time."""
    return flop / _best_seconds(call, repeats) / 1e9


def ceilings(quick: bool) -> dict:
    """The machine's matmul and 3x3 conv rates through TF, in GFLOP/s."""
    import tensorflow as tf

    size = 1024 if quick else 2048
    repeats = 3 if quick else 5
    results = {"matmul_size": size}
    for dtype in (tf.float32, tf.bfloat16):
        a = tf.random.normal([size, size], dtype=tf.float32)
        a = tf.cast(a, dtype)
        # .numpy() forces completion; the copy is size^2 next to size^3 work.
        results[f"matmul_{dtype.name}_gflops"] = _rate(
            lambda a=a: tf.matmul(a, a).numpy(), 2.0 * size**3, repeats)
    batch, height, channels = (8 if quick else 32), 64, 64
    images = tf.random.normal([batch, height, height, channels])
    kernel = tf.random.normal([3, 3, channels, channels])
    conv_flop = 2.0 * batch * height * height * 9 * channels * channels
    results["conv3x3_shape"] = f"[{batch},{height},{height},{channels}] * [3,3,{channels},"\
                               f"{channels}] SAME"
    results["conv3x3_float32_gflops"] = _rate(
        lambda: tf.nn.conv2d(images, kernel, 1, "SAME").numpy(), conv_flop, repeats)
    return results


# ---------------------------------------------------------------------------------------------
# FLOPs from the graph.

# Ops whose outputs are computed arithmetic but that tfprof has no flop rule for. Einsum
# carries real multiply-adds here (the flow's invertible 1x1 convs); the rest are element-wise
# and counted as uncounted output elements only, to show their size.
_CONTROL_OPS = {"If", "StatelessIf", "While", "StatelessWhile", "PartitionedCall",
                "StatefulPartitionedCall"}


def _einsum_flops(op) -> float:
    """2 x the product of every index's size: one multiply-add per index combination."""
    equation = op.get_attr("equation").decode()
    inputs, _ = equation.replace(" ", "").split("->")
    sizes = {}
    for letters, tensor in zip(inputs.split(","), op.inputs):
        shape = tensor.shape
        if "." in letters or not shape.is_fully_defined():
            return float("nan")
        for letter, size in zip(letters, shape.as_list()):
            sizes[letter] = size
    total = 2.0
    for size in sizes.values():
        total *= size
    return total


def _live_ops(graph) -> set:
    """Names of the ops that a function output or a stateful control output depends on."""
    pending = [t.op for t in graph.outputs] + list(graph.control_outputs)
    live = set()
    while pending:
        op = pending.pop()
        if op.name in live:
            continue
        live.add(op.name)
        pending.extend(t.op for t in op.inputs)
        pending.extend(op.control_inputs)
    return live


def count_flops(graph, split_at: int | None = None) -> dict:
    """FLOPs of ``graph`` by tfprof's float_operation, plus what it leaves uncounted.

    Args:
      graph: a FuncGraph with static shapes.
      split_at: if given, ops created before this index count as phase "d", the rest "g".

    Returns:
      {"total", "by_type", "by_phase", "einsum_added", "uncounted", "dead"}: FLOPs of the
      live ops, per op type, per phase, the Einsum FLOPs this adds to tfprof's figure, op
      types with float outputs and no count (with their output elements), and the FLOPs of
      dead ops (in the graph, reaching no output or side effect, so never run).
    """
    import tensorflow as tf

    options = (tf.compat.v1.profiler.ProfileOptionBuilder(
        tf.compat.v1.profiler.ProfileOptionBuilder.float_operation())
        .with_empty_output().build())
    profile = tf.compat.v1.profiler.profile(graph=graph, options=options)
    counted = {node.name: float(node.total_float_ops) for node in profile.children}
    order = {op.name: index for index, op in enumerate(graph.get_operations())}
    by_type: dict = {}
    by_phase = {"d": 0.0, "g": 0.0}
    uncounted: dict = {}
    einsum = 0.0

    def add(op, value):
        by_type[op.type] = by_type.get(op.type, 0.0) + value
        if split_at is not None:
            by_phase["d" if order[op.name] < split_at else "g"] += value

    live = _live_ops(graph)
    dead = 0.0
    for op in graph.get_operations():
        if op.name not in live:
            # Built by the tape but feeding nothing (e.g. filter gradients of networks not
            # being trained, or a backward pass cut by a zero-gradient op): pruned at run time.
            dead += counted.get(op.name, 0.0) or (
                _einsum_flops(op) if op.type == "Einsum" else 0.0)
            continue
        if op.name in counted and counted[op.name] > 0:
            add(op, counted[op.name])
        elif op.type == "Einsum":
            value = _einsum_flops(op)
            einsum += value
            add(op, value)
        elif op.type in _CONTROL_OPS or any(t.dtype.is_floating for t in op.outputs):
            elements = sum(t.shape.num_elements() or 0 for t in op.outputs
                           if t.dtype.is_floating)
            entry = uncounted.setdefault(op.type, {"ops": 0, "output_elements": 0})
            entry["ops"] += 1
            entry["output_elements"] += elements
    # Pure data movement and variable reads carry no arithmetic.
    for name in ("Const", "Identity", "ReadVariableOp", "Reshape", "Placeholder", "Squeeze",
                 "StridedSlice", "ConcatV2", "Pack", "Fill", "Slice", "Tile", "Transpose",
                 "StopGradient", "Cast", "ShapeN", "IdentityN", "ConcatOffset", "Range",
                 "SelectV2", "MatrixDiagV3", "MatrixDiagPartV3", "StridedSliceGrad",
                 "SpaceToDepth", "DepthToSpace", "CheckNumerics", "Round", "Floor"):
        uncounted.pop(name, None)
    return {"total": sum(by_type.values()), "by_type": by_type, "by_phase": by_phase,
            "einsum_added": einsum, "uncounted": uncounted, "dead": dead,
            "tfprof_total": float(profile.total_float_ops)}


# ---------------------------------------------------------------------------------------------
# Models, built as vec2face_tf/training/trainer.py builds them.

class Setup:
    """Config, faces, dataset and the engine-vector center of the cpu64 preset."""

    def __init__(self):
        from vec2face_tf import config as config_lib

        self.config = config_lib.get_config(_PRESET)
        data = self.config.data
        started = time.perf_counter()
        self.faces = faces.load(self.config, data.resolution)
        self.load_seconds = time.perf_counter() - started
        self.batch = data.identities_per_batch * data.images_per_identity
        self.center = self.faces.embeddings.mean(axis=0)
        self.dataset_args = dict(resolution=data.resolution,
                                 identities_per_batch=data.identities_per_batch,
                                 images_per_identity=data.images_per_identity, seed=data.seed)

    def dataset(self):
        from vec2face_tf.data import pipeline

        return pipeline.make_dataset(self.faces, **self.dataset_args)

    def parts(self, policy: str = "float32"):
        """The four networks under ``policy`` (``train.precision``; the flow stays float32)."""
        from vec2face_tf.models import dibigan

        parts = dibigan.build_parts(self.config, embedding_dim=self.faces.embeddings.shape[1],
                                    precision=policy)
        for network in (parts.generator, parts.discriminator):
            network.embedding_normalization.set_center(self.center)
        first_images, _, _ = next(iter(self.dataset()))
        parts.flow(dibigan.flow_lib.BijectiveFlow.preprocess(
            first_images, self.config.flow.num_bits, dequantize=False))
        return parts

    def gan(self, parts, model_class=None, **compile_args):
        import keras

        from vec2face_tf.models import dibigan

        train = self.config.train
        model_class = model_class or dibigan.DiBiGAN
        gan = model_class(parts, self.config, center=self.center, global_batch_size=self.batch)
        gan.compile(
            d_optimizer=keras.optimizers.Adam(train.discriminator_lr, beta_1=train.beta_1,
                                              beta_2=train.beta_2),
            g_optimizer=keras.optimizers.Adam(train.generator_lr, beta_1=train.beta_1,
                                              beta_2=train.beta_2, use_ema=True,
                                              ema_momentum=train.ema_momentum),
            **compile_args)
        gan.build_optimizers()
        return gan

    def stage1(self, parts, **compile_args):
        import keras

        from vec2face_tf.models import dibigan

        # With the image student (the default), stage 1 trains the flow alone.
        student = parts.student if self.config.student.kind == "flow" else None
        model = dibigan.FlowStudentTrainer(
            parts.flow, student, num_bits=self.config.flow.num_bits, center=self.center,
            global_batch_size=self.batch)
        model.compile(optimizer=keras.optimizers.Adam(self.config.train.flow_lr), **compile_args)
        model.optimizer.build(model.trainable_networks_variables)
        return model


def _avg_pool_multiscale_l1(self, fake_scales, images, scale_weights):
    """DiBiGAN._multiscale_l1 with area resizing written as average pooling.

    For an integer factor, area resizing is exactly average pooling over factor x factor
    blocks, and ``AvgPool`` has an XLA kernel where ``ResizeArea`` has none.
    """
    import tensorflow as tf

    from vec2face_tf import losses as losses_lib

    total = 0.0
    for index, fake in enumerate(fake_scales):
        factor = images.shape[1] // fake.shape[1]
        real = images if factor == 1 else tf.nn.avg_pool2d(images, factor, factor, "VALID")
        total += scale_weights[index] * losses_lib.l1_reconstruction_loss(
            fake, real, global_batch_size=self.global_batch_size)
    return total


def _model_classes():
    """Benchmark-only DiBiGAN variants: XLA-compilable, and the two-forward step of before."""
    import tensorflow as tf

    from vec2face_tf.models import dibigan

    class XlaDiBiGAN(dibigan.DiBiGAN):
        _multiscale_l1 = _avg_pool_multiscale_l1

    class TwoForwardDiBiGAN(dibigan.DiBiGAN):
        """DiBiGAN.train_step as it was before one generator forward served both steps: the
        same losses and updates, with a second generator forward for the G step."""

        def train_step(self, data):
            images, embeddings, labels = data
            step = self.g_optimizer.iterations
            noise = dibigan.per_example_noise(embeddings, step, self.config.generator.noise_dim)
            weights = {name: tf.cast(schedule(step), tf.float32)
                       for name, schedule in self.weight_schedules.items()}
            d_loss, real_logits = self._discriminator_step(
                images, embeddings, self.generator([embeddings, noise], training=True))
            with tf.GradientTape() as g_tape:
                fake_images, fake_scales = self.generator(
                    [embeddings, noise], training=True, return_all_scales=True)
                g_terms, student_vectors, fake_logits = self.generator_objective(
                    images, embeddings, labels, fake_images, fake_scales, weights)
            g_variables = self.generator.trainable_variables
            self.g_optimizer.apply_gradients(
                zip(g_tape.gradient(g_terms["g_loss"], g_variables), g_variables))
            return self._track({"d_loss": d_loss, **g_terms}, embeddings, student_vectors,
                               real_logits, fake_logits, weights)

    return XlaDiBiGAN, TwoForwardDiBiGAN


# ---------------------------------------------------------------------------------------------
# Timing.

class FitVariant:
    """One ``model.fit`` configuration; ``sample()`` times one execution after a warm-up.

    The warm-up execution traces (and compiles) the step and is reported apart. A sample is
    the time from Keras's batch-begin to batch-end callback, i.e. the step function with its
    input fetch, without fit()'s per-call setup.
    """

    def __init__(self, name: str, model, dataset, steps_per_execution: int = 1):
        import keras

        self.name, self.model, self.dataset = name, model, dataset
        self.steps_per_execution = steps_per_execution
        marks = self.marks = []

        class Marks(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                marks.append(time.perf_counter())

            def on_train_batch_end(self, batch, logs=None):
                marks.append(time.perf_counter())

        self.callback = Marks()
        started = time.perf_counter()
        self._fit()
        self.first_call_seconds = time.perf_counter() - started

    def _fit(self):
        self.marks.clear()
        self.model.fit(self.dataset, epochs=1, steps_per_epoch=self.steps_per_execution,
                       verbose=0, callbacks=[self.callback])

    def sample(self) -> float:
        self._fit()
        return (self.marks[-1] - self.marks[0]) / self.steps_per_execution


class EagerVariant:
    """``model.train_step`` called eagerly on the next batch (no tf.function)."""

    def __init__(self, name: str, model, dataset):
        self.name, self.model, self.iterator = name, model, iter(dataset)
        started = time.perf_counter()
        self.model.train_step(next(self.iterator))
        self.first_call_seconds = time.perf_counter() - started

    def sample(self) -> float:
        batch = next(self.iterator)
        started = time.perf_counter()
        self.model.train_step(batch)
        return time.perf_counter() - started


class ChildVariant:
    """The production fit step in a child process with its own thread settings.

    TF fixes its thread pools when its runtime starts, so each setting needs a process. The
    child traces at start, then times one step per "time" line on its stdin, so that its
    samples interleave with every other variant's.
    """

    def __init__(self, name: str, intra: int, inter: int):
        self.name = name
        command = [sys.executable, os.path.abspath(__file__), f"--child_threads={intra},{inter}",
                   f"--cache_dir={faces.CACHE_DIR.value}"]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
        self.first_call_seconds = None

    def wait_ready(self) -> None:
        self.first_call_seconds = float(self._reply("READY"))

    def _reply(self, tag: str) -> str:
        for line in self.process.stdout:
            if line.startswith(tag + " "):
                return line[len(tag) + 1:].strip()
        raise RuntimeError(f"{self.name}: child exited with {self.process.wait()}")

    def sample(self) -> float:
        self.process.stdin.write("time\n")
        self.process.stdin.flush()
        return float(self._reply("SECONDS"))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=60)


def _failed(name: str, error: Exception) -> dict:
    message = str(error).strip().splitlines()
    detail = next((line for line in message if "unsupported" in line.lower()),
                  message[0] if message else type(error).__name__)
    return {"variant": name, "error": f"{type(error).__name__}: {detail[:300]}"}


def build_variant(name: str, make) -> object:
    """``make()``'s variant, or the error row that stopped it (a failing lever is a result)."""
    print(f"   building {name}", flush=True)
    try:
        return make()
    except Exception as error:  # noqa: BLE001 - reported in the table, not raised
        return _failed(name, error)


def time_rounds(variants: list, rounds: int) -> dict:
    """Samples of every variant, interleaved: one per variant per round, order rotated.

    Interleaving keeps the other jobs on this shared machine from favouring whichever
    variant happened to run in a quiet minute.
    """
    samples = {variant.name: [] for variant in variants}
    for index in range(rounds):
        shift = index % max(1, len(variants))
        for variant in variants[shift:] + variants[:shift]:
            try:
                samples[variant.name].append(variant.sample())
            except Exception as error:  # noqa: BLE001 - a child that dies mid-run is reported
                samples[variant.name] = _failed(variant.name, error)
                variants = [v for v in variants if v is not variant]
    return samples


def time_pipeline(dataset, batches: int) -> float:
    """Batches per second of the tf.data pipeline alone, after a warm-up."""
    iterator = iter(dataset)
    for _ in range(5):
        next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches / (time.perf_counter() - started)


def time_refresh(setup: Setup, gan) -> dict:
    """Seconds of one StudentRefresh.refresh() with the dlib engine (second call timed)."""
    import numpy as np

    from vec2face_tf.engines import get_engine
    from vec2face_tf.training import callbacks as callbacks_lib

    engine = get_engine("dlib")
    train = setup.config.train
    sample = np.random.default_rng(0).choice(len(setup.faces), size=512, replace=False)
    refresh = callbacks_lib.StudentRefresh(
        engine, real_images=setup.faces.crops[sample].astype(np.float32) / 127.5 - 1.0,
        real_embeddings=setup.faces.embeddings[sample], every=train.refresh_every,
        buffer_size=train.replay_buffer_size, max_queries=train.max_engine_queries,
        center=setup.center, seed=0)
    refresh.set_model(gan)
    started = time.perf_counter()
    refresh.refresh()
    first = time.perf_counter() - started
    started = time.perf_counter()
    refresh.refresh()
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    engine.embed(np.zeros((refresh.queries_per_refresh, 64, 64, 3), np.uint8) + 128)
    engine_seconds = time.perf_counter() - started
    engine.close()
    return {"seconds": seconds, "first_call_seconds": first,
            "engine_embed_seconds": engine_seconds,
            "queries_per_refresh": refresh.queries_per_refresh, "every": train.refresh_every}


def _row(variant, samples, batch: int, flop: float) -> dict:
    import numpy as np

    if isinstance(variant, dict):
        return variant
    if isinstance(samples, dict):
        return samples
    seconds = float(np.median(samples))
    return {"variant": variant.name, "seconds_per_step": seconds,
            "min_seconds_per_step": float(min(samples)), "samples": samples,
            "first_call_seconds": variant.first_call_seconds, "images_per_s": batch / seconds,
            "achieved_gflops": flop / seconds / 1e9}


# ---------------------------------------------------------------------------------------------
# Profiler.

def _scope(op_name: str) -> str:
    """'network direction' of a TF op name, e.g. 'flow backward', 'discriminator forward'."""
    parts = [part for part in op_name.split("/") if part != "StatefulPartitionedCall"]
    direction = "forward"
    if parts and parts[0] == "gradient_tape":
        direction, parts = "backward", parts[1:]
    head = parts[0] if parts else "?"
    head = head.rstrip("0123456789").rstrip("_") or head
    if head in ("adam", "Adam") or "optimizer" in head or "adam" in head:
        return "optimizer updates"
    if head.startswith(("flow", "bijective_flow", "level", "conv_in", "conv_hidden",
                        "conv_out", "conv_prior", "conv1x1", "actnorm", "coupling")):
        head = "flow"
    if head not in ("generator", "discriminator", "flow", "student", "student_head"):
        return "unscoped (losses, flow channel splits, noise, metrics)"
    return f"{head} {direction}"


def _top_ops(profile_dir: str, limit: int = 12) -> dict:
    """Op time of the newest trace in ``profile_dir``, summed by op type and by network.

    Only the TF executor's compute threads are read ("tf_Compute" lines), where each event is
    one op named "op_name:OpType"; an op's own intra-op threads are inside its event.
    """
    import glob

    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = sorted(glob.glob(os.path.join(profile_dir, "**", "*.xplane.pb"), recursive=True),
                   key=os.path.getmtime)
    space = xplane_pb2.XSpace()
    with open(paths[-1], "rb") as handle:
        space.ParseFromString(handle.read())
    by_type: dict = {}
    by_scope: dict = {}
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if "::" in name or ":" not in name:
                    continue
                op_name, op_type = name.rsplit(":", 1)
                milliseconds = event.duration_ps / 1e9
                for table, key in ((by_type, op_type), (by_scope, _scope(op_name))):
                    entry = table.setdefault(key, [0.0, 0])
                    entry[0] += milliseconds
                    entry[1] += 1

    def ranked(table):
        total = sum(value[0] for value in table.values()) or 1.0
        rows = sorted(table.items(), key=lambda item: -item[1][0])[:limit]
        return [{"name": name, "ms": ms, "share": ms / total, "events": count}
                for name, (ms, count) in rows]

    return {"by_op_type": ranked(by_type), "by_network": ranked(by_scope),
            "op_ms_total": sum(value[0] for value in by_type.values())}


def profile_step(model, dataset, profile_dir: str) -> dict:
    """Traces one fit step (the model is already traced) and returns its top ops by time."""
    import tensorflow as tf

    if getattr(model, "train_function", None) is None:  # not traced yet: keep tracing out
        model.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0)
    tf.profiler.experimental.start(profile_dir)
    started = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0)
    wall = time.perf_counter() - started
    tf.profiler.experimental.stop()
    return {**_top_ops(profile_dir), "step_wall_ms": 1000 * wall}


# ---------------------------------------------------------------------------------------------
# Driver.

def _child(threads: str) -> None:
    """Builds the production fit step under one thread setting, then times one step per
    "time" line on stdin (see ChildVariant)."""
    import tensorflow as tf

    intra, inter = (int(v) for v in threads.split(","))
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    setup = Setup()
    variant = FitVariant("child", setup.gan(setup.parts()), setup.dataset())
    print(f"READY {variant.first_call_seconds}", flush=True)
    for line in sys.stdin:
        if line.strip() == "time":
            print(f"SECONDS {variant.sample()}", flush=True)


def _trace_train_step(model, dataset, split_on=None):
    """The concrete graph of ``model.train_step``; with ``split_on`` (an optimizer), also the
    number of ops created before that optimizer's apply_gradients returned."""
    import tensorflow as tf

    specs = tuple(tf.TensorSpec(spec.shape, spec.dtype) for spec in dataset.element_spec)
    marks = []
    if split_on is not None:
        original = split_on.apply_gradients

        def marked(*args, **kwargs):
            result = original(*args, **kwargs)
            marks.append(len(tf.compat.v1.get_default_graph().get_operations()))
            return result

        split_on.apply_gradients = marked
    try:
        graph = tf.function(model.train_step).get_concrete_function(specs).graph
    finally:
        if split_on is not None:
            del split_on.apply_gradients
    return graph, (marks[0] if marks else None)


def _forward_passes(setup: Setup, parts, repeats: int) -> dict:
    """FLOPs and best time (tf.function) of one forward pass of each network at the batch."""
    import tensorflow as tf

    from vec2face_tf.models import dibigan

    batch, resolution = setup.batch, setup.config.data.resolution
    dim, noise_dim = setup.faces.embeddings.shape[1], setup.config.generator.noise_dim
    image = tf.TensorSpec([batch, resolution, resolution, 3])
    vector = tf.TensorSpec([batch, dim])
    calls = {
        "generator": (lambda e, n: parts.generator([e, n], training=True),
                      (vector, tf.TensorSpec([batch, noise_dim]))),
        "discriminator": (lambda x, e: parts.discriminator([x, e], training=True),
                          (image, vector)),
        "flow": (lambda x: parts.flow.forward(dibigan.flow_lib.BijectiveFlow.preprocess(
            x, setup.config.flow.num_bits, dequantize=False))[0], (image,)),
    }
    results = {}
    for name, (fn, specs) in calls.items():
        compiled = tf.function(fn)
        flop = count_flops(compiled.get_concrete_function(*specs).graph)["total"]
        inputs = [tf.random.uniform(spec.shape, -1.0, 1.0) for spec in specs]
        seconds = _best_seconds(lambda compiled=compiled, inputs=inputs: tf.nest.map_structure(
            lambda t: t.numpy(), compiled(*inputs)), repeats)
        results[name] = {"flops": flop, "seconds": seconds, "gflops": flop / seconds / 1e9}
    return results



def main(argv):
    del argv
    if _CHILD_THREADS.value:
        _child(_CHILD_THREADS.value)
        return
    import tensorflow as tf

    quick = _QUICK.value
    rounds = 1 if quick else _ROUNDS.value
    levers = [] if quick else list(_LEVERS.value)
    run_started = time.perf_counter()
    results = {"preset": _PRESET, "quick": quick, "rounds": rounds, "levers": levers,
               "machine": {"processor": platform.processor() or platform.machine(),
                           "cpus": os.cpu_count(), "load_average_start": os.getloadavg(),
                           "shared": "other jobs shared the 2 cores during the run",
                           "cpu_flags": sorted(_cpu_flags())},
               "tensorflow": tf.__version__}

    print("== ceilings", flush=True)
    results["ceilings"] = ceilings(quick)
    matmul = results["ceilings"]["matmul_float32_gflops"]

    setup = Setup()
    dataset = setup.dataset()
    parts = setup.parts()
    gan = setup.gan(parts)
    stage1 = setup.stage1(parts)

    print("== FLOPs from the graphs", flush=True)
    graph, split_at = _trace_train_step(gan, dataset, split_on=gan.d_optimizer)
    gan_flops = count_flops(graph, split_at=split_at)
    stage1_flops = count_flops(_trace_train_step(stage1, dataset)[0])
    results["flops"] = {
        "d_step": gan_flops["by_phase"]["d"], "g_step": gan_flops["by_phase"]["g"],
        "stage2_step": gan_flops["total"], "stage1_step": stage1_flops["total"],
        "stage2_by_type": gan_flops["by_type"], "stage1_by_type": stage1_flops["by_type"],
        "einsum_added": {"stage2": gan_flops["einsum_added"],
                         "stage1": stage1_flops["einsum_added"]},
        "uncounted": {"stage2": gan_flops["uncounted"], "stage1": stage1_flops["uncounted"]},
        "tfprof_total": {"stage2": gan_flops["tfprof_total"],
                         "stage1": stage1_flops["tfprof_total"]},
        "dead_not_counted": {"stage2": gan_flops["dead"], "stage1": stage1_flops["dead"]},
        "forward_pass": _forward_passes(setup, parts, 2 if quick else 3),
        "rules": "tfprof float_operation per op (Conv2D, MatMul, element-wise ...); its "
                 "Conv2DBackpropInput and Conv2DBackpropFilter rules give each the forward "
                 "conv's 2*N*Ho*Wo*Kh*Kw*Cin*Cout. Einsum (no tfprof rule; the flow's 1x1 "
                 "convs) added here as 2 x the product of all index sizes. Element-wise "
                 "activations without a rule (Relu, LeakyRelu, Exp, Sigmoid, ...) and the "
                 "bodies of If/While ops are left at 0 and listed with their output elements. "
                 "Only live ops count: ops reaching no output or stateful op (never run "
                 "after pruning) are reported as dead_not_counted.",
    }
    stage2_flop, stage1_flop = gan_flops["total"], stage1_flops["total"]

    batch = setup.batch
    xla_class, two_forward_class = _model_classes()
    print("== building and tracing every variant (first calls)", flush=True)
    children = []
    if "threads" in levers:  # Started first: they trace while the parent does.
        children = [ChildVariant(f"fit threads intra={intra} inter={inter} (child process)",
                                 intra, inter) for intra, inter in _THREAD_SETTINGS]
    stage2 = [build_variant("eager train_step (naive)", lambda: EagerVariant(
                  "eager train_step (naive)", gan, dataset)),
              build_variant("fit (production)", lambda: FitVariant(
                  "fit (production)", gan, dataset))]
    stage1_variants = []
    if _STAGE1.value and not quick:  # The sanity run skips it: same code paths as stage 2.
        stage1_variants = [
            build_variant("eager train_step (naive)", lambda: EagerVariant(
                "eager train_step (naive)", stage1, dataset)),
            build_variant("fit (production)", lambda: FitVariant(
                "fit (production)", stage1, dataset))]
    plans = []
    if "xla" in levers:
        plans += [("fit jit_compile=True (as is)", lambda: setup.gan(parts, jit_compile=True)),
                  ("fit jit_compile=True, area->avg_pool",
                   lambda: setup.gan(parts, model_class=xla_class, jit_compile=True))]
    if "spe" in levers:
        plans.append((f"fit steps_per_execution={_STEPS_PER_EXECUTION}",
                      lambda: setup.gan(parts, steps_per_execution=_STEPS_PER_EXECUTION)))
    if "two_g" in levers:
        plans.append(("fit two generator forwards (before)",
                      lambda: setup.gan(parts, model_class=two_forward_class)))
    if "bf16" in levers:
        bf16_parts = setup.parts("mixed_bfloat16")
        plans.append(("fit mixed_bfloat16 (flow float32)", lambda: setup.gan(bf16_parts)))
    for name, make in plans:
        spe = _STEPS_PER_EXECUTION if "steps_per_execution" in name else 1
        stage2.append(build_variant(name, lambda name=name, make=make, spe=spe: FitVariant(
            name, make(), dataset, steps_per_execution=spe)))
    if "xla_stage1" in levers:
        stage1_variants.append(build_variant("fit jit_compile=True", lambda: FitVariant(
            "fit jit_compile=True", setup.stage1(parts, jit_compile=True), dataset)))
    for child in children:
        stage2.append(build_variant(child.name, lambda child=child: (child.wait_ready(),
                                                                     child)[1]))

    print(f"== timing, {rounds} interleaved rounds", flush=True)
    timed2 = [v for v in stage2 if not isinstance(v, dict)]
    samples2 = time_rounds(timed2, rounds)
    for child in children:
        child.close()
    samples1 = time_rounds([v for v in stage1_variants if not isinstance(v, dict)], rounds)
    rows2 = [_row(v, None if isinstance(v, dict) else samples2[v.name], batch, stage2_flop)
             for v in stage2]
    rows1 = [_row(v, None if isinstance(v, dict) else samples1[v.name], batch, stage1_flop)
             for v in stage1_variants]

    print("== ceilings again (the machine is shared; the higher reading is the ceiling)",
          flush=True)
    results["ceilings_end"] = ceilings(quick)
    matmul = max(matmul, results["ceilings_end"]["matmul_float32_gflops"])
    results["matmul_ceiling_gflops"] = matmul
    print("== input pipeline", flush=True)
    pipeline_rate = time_pipeline(dataset, 20 if quick else 100)
    print("== student refresh", flush=True)
    refresh = time_refresh(setup, gan)

    if _PROFILE_DIR.value:
        print("== profiler", flush=True)
        results["profile"] = {
            "stage2_fit": profile_step(gan, dataset, os.path.join(_PROFILE_DIR.value, "s2")),
            "stage1_fit": profile_step(stage1, dataset, os.path.join(_PROFILE_DIR.value, "s1")),
        }

    fit2 = rows2[1]
    step_rate = 1.0 / fit2["seconds_per_step"]
    refresh_share = refresh["seconds"] / (refresh["every"] * fit2["seconds_per_step"]
                                          + refresh["seconds"])
    results.update(stage2=rows2, stage1=rows1, pipeline={
        "batches_per_s": pipeline_rate, "images_per_s": pipeline_rate * batch,
        "step_batches_per_s": step_rate, "headroom": pipeline_rate / step_rate},
        refresh={**refresh, "share_of_wall_time": refresh_share,
                 "refreshes_per_step": 1.0 / refresh["every"]})
    best = max((row for row in rows2 if "error" not in row and "eager" not in row["variant"]),
               key=lambda row: row["images_per_s"])
    results["goals"] = _goals(results, matmul, rows2[0], fit2, best)
    results["machine"]["load_average_end"] = os.getloadavg()
    results["wall_seconds"] = time.perf_counter() - run_started
    _print(results, setup)
    write_results(results, _OUT.value)


def _cpu_flags() -> set:
    wanted = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni"}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return wanted & set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _goals(results: dict, matmul: float, eager: dict, fit: dict, best: dict) -> dict:
    pipeline = results["pipeline"]
    goals = {}
    for label, row in (("fit", fit), ("best", best)):
        share = row["achieved_gflops"] / matmul
        goals[f"ceiling_share_{label}"] = {"variant": row["variant"], "value": share,
                                           "goal": _GOAL_CEILING_SHARE,
                                           "met": share >= _GOAL_CEILING_SHARE}
        speedup = eager["seconds_per_step"] / row["seconds_per_step"]
        goals[f"eager_speedup_{label}"] = {"variant": row["variant"], "value": speedup,
                                           "goal": _GOAL_EAGER_SPEEDUP,
                                           "met": speedup >= _GOAL_EAGER_SPEEDUP}
    goals["pipeline_headroom"] = {"value": pipeline["headroom"], "goal": _GOAL_DATA_HEADROOM,
                                  "met": pipeline["headroom"] >= _GOAL_DATA_HEADROOM}
    return goals


def _print(results: dict, setup: Setup) -> None:
    for key in ("ceilings", "ceilings_end"):
        ceilings_ = results[key]
        print(f"{key}: matmul {ceilings_['matmul_size']}^2 float32 "
              f"{ceilings_['matmul_float32_gflops']:.1f} GFLOP/s, bfloat16 "
              f"{ceilings_['matmul_bfloat16_gflops']:.1f} GFLOP/s; conv3x3 float32 "
              f"{ceilings_['conv3x3_float32_gflops']:.1f} GFLOP/s "
              f"({ceilings_['conv3x3_shape']})")
    print(f"ceiling used for %matmul and the goal: {results['matmul_ceiling_gflops']:.1f} "
          "GFLOP/s (the higher matmul reading)")
    flops = results["flops"]
    print(f"\nFLOPs per step (batch {setup.batch}, {setup.config.data.resolution} px), GFLOP:")
    print(f"  D step {flops['d_step'] / 1e9:8.2f}   G step {flops['g_step'] / 1e9:8.2f}   "
          f"stage-2 total {flops['stage2_step'] / 1e9:8.2f}   stage-1 flow+student "
          f"{flops['stage1_step'] / 1e9:8.2f}")
    print("  one forward pass (training=True, tf.function, best time): " + ", ".join(
        f"{name} {v['flops'] / 1e9:.2f} GFLOP in {1000 * v['seconds']:.0f} ms = "
        f"{v['gflops']:.0f} GFLOP/s" for name, v in flops["forward_pass"].items()))
    top = sorted(flops["stage2_by_type"].items(), key=lambda item: -item[1])[:6]
    print("  stage-2 by op type: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in top))
    print(f"  Einsum added (no tfprof rule): stage 2 {flops['einsum_added']['stage2'] / 1e9:.2f},"
          f" stage 1 {flops['einsum_added']['stage1'] / 1e9:.2f}; dead ops left out (never "
          f"run): stage 2 {flops['dead_not_counted']['stage2'] / 1e9:.2f}, stage 1 "
          f"{flops['dead_not_counted']['stage1'] / 1e9:.2f}; tfprof's own total over all ops: "
          f"stage 2 {flops['tfprof_total']['stage2'] / 1e9:.2f}")
    for stage in ("stage2", "stage1"):
        uncounted = flops["uncounted"][stage]
        listed = sorted(uncounted.items(), key=lambda item: -item[1]["output_elements"])[:8]
        print(f"  uncounted in {stage} (op type: ops, M output elements): " + ", ".join(
            f"{k}: {v['ops']}, {v['output_elements'] / 1e6:.1f}" for k, v in listed))

    header = (f"{'variant':48s} {'s/step':>7s} {'min s':>6s} {'img/s':>6s} {'GFLOP/s':>7s} "
              f"{'%matmul':>7s} {'vs fit':>6s} {'1st call s':>10s}")
    matmul = results["matmul_ceiling_gflops"]
    for title, rows in (("stage 2 (D + G step)", results["stage2"]),
                        ("stage 1 (flow + student)", results["stage1"])):
        if not rows:
            continue
        print(f"\n{title}\n{header}")
        base = rows[1].get("seconds_per_step")
        for row in rows:
            if "error" in row:
                print(f"{row['variant']:48s} FAILED {row['error']}")
                continue
            print(f"{row['variant']:48s} {row['seconds_per_step']:7.3f} "
                  f"{row['min_seconds_per_step']:6.2f} {row['images_per_s']:6.2f} "
                  f"{row['achieved_gflops']:7.1f} {100 * row['achieved_gflops'] / matmul:6.1f}% "
                  f"{base / row['seconds_per_step']:5.2f}x {row['first_call_seconds']:10.1f}")
    pipeline = results["pipeline"]
    print(f"\ntf.data alone: {pipeline['images_per_s']:.0f} images/s "
          f"({pipeline['batches_per_s']:.1f} batches/s); fit consumes "
          f"{pipeline['step_batches_per_s']:.3f} batches/s; headroom {pipeline['headroom']:.0f}x")
    refresh = results["refresh"]
    print(f"student refresh: {refresh['seconds']:.2f} s each (dlib alone on "
          f"{refresh['queries_per_refresh']} images: {refresh['engine_embed_seconds']:.2f} s), "
          f"every {refresh['every']} steps: {100 * refresh['share_of_wall_time']:.2f}% of "
          "wall time")
    for stage, profile in results.get("profile", {}).items():
        print(f"\nprofiler, {stage}: one fit step {profile['step_wall_ms']:.0f} ms wall, "
              f"{profile['op_ms_total']:.0f} ms of op time on the executor threads")
        for key in ("by_op_type", "by_network"):
            print(f"  {key}: " + ", ".join(f"{op['name']} {op['ms']:.0f} ms "
                                           f"({100 * op['share']:.0f}%)"
                                           for op in profile[key]))
    print("\ngoals:")
    for name, goal in results["goals"].items():
        variant = f" [{goal['variant']}]" if "variant" in goal else ""
        print(f"  {name:24s}{variant}: {goal['value']:.3g} vs goal {goal['goal']:g} -> "
              f"{'PASS' if goal['met'] else 'FAIL'} (ratio {goal['value'] / goal['goal']:.2f})")
    machine = results["machine"]
    print(f"\nwall {results['wall_seconds']:.0f} s; load average "
          f"{machine['load_average_start'][0]:.2f} -> {machine['load_average_end'][0]:.2f} "
          f"(shared machine); TF {results['tensorflow']}")


if __name__ == "__main__":
    app.run(main)
