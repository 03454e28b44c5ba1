r"""Trains DiBiGAN against a blackbox engine.

  vec2face-train --preset=cpu64 --data=/path/to/faces --engine=dlib --model_dir=runs/dlib64
  vec2face-train --preset=smoke --data=tfds:lfw --model_dir=/tmp/smoke
  vec2face-train --flagfile=run.flags --config=generator.base_channels=128
  vec2face-train --data=faces-dev --extra_data=faces-extra --model_dir=runs/s --stage=student
  vec2face-train --data=faces-dev --extra_data=faces-extra --model_dir=runs/g \
      --student_from=vec2face_tf/demo/student --init_from=vec2face_tf/demo/model

Rerunning with the same --model_dir resumes from its latest checkpoint.
"""

import sys

from absl import app, flags

_PRESET = flags.DEFINE_enum("preset", "cpu64", ["smoke", "cpu64", "paper128"],
                            "Config preset: smoke (CI, 32 px), cpu64 (64 px), paper128.")
_DATA = flags.DEFINE_string("data", None, "Folder <identity>/<image>, or tfds:lfw / tfds:celeb_a.")
_ENGINE = flags.DEFINE_string("engine", None, "Engine spec (default: the preset's, dlib).")
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Output folder; a rerun resumes from it.")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None, "Embedding cache (default <model_dir>/cache).")
_STRATEGY = flags.DEFINE_enum("strategy", "default",
                              ["default", "mirrored", "multiworker", "onedevice"],
                              "tf.distribute strategy.")
_STAGE = flags.DEFINE_enum("stage", "all", ["all", "student"],
                           "all: every stage; student: only the distillation of the image "
                           "student (student.kind=image), then stop.")
_EXTRA_DATA = flags.DEFINE_multi_string(
    "extra_data", [], "More photo folders (no identity pairs needed, e.g. faces-extra) that "
    "only the image student distils from.")
_EXTRA_CACHE_DIR = flags.DEFINE_string("extra_cache_dir", None,
                                       "Cache of --extra_data (default <model_dir>/cache-extra).")
_STUDENT_STEPS = flags.DEFINE_integer("student_steps", None, "Image student distillation "
                                      "steps.", lower_bound=0)
_STAGE1_STEPS = flags.DEFINE_integer("stage1_steps", None, "Flow (+ flow student) steps.",
                                     lower_bound=0)
_STAGE2_STEPS = flags.DEFINE_integer("stage2_steps", None, "GAN steps.", lower_bound=0)
_INIT_FROM = flags.DEFINE_string(
    "init_from", None, "Exported generator (SavedModel version folder, e.g. "
    "vec2face_tf/demo/model) whose weights G and its EMA start from (a warm start).")
_STUDENT_FROM = flags.DEFINE_string(
    "student_from", None, "Exported image student (e.g. vec2face_tf/demo/student) to start "
    "from instead of distilling one; skips the student stage.")
_STUDENT_INIT_FROM = flags.DEFINE_string(
    "student_init_from", None, "Exported image student whose weights the student stage "
    "starts from and distils on towards this run's engine (e.g. the demo's dlib student for "
    "an SFace run).")
_CONFIG = flags.DEFINE_multi_string("config", [], "Config override section.field=value.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Processes that align and embed.", lower_bound=0)
_MAX_IMAGES = flags.DEFINE_integer("max_images", 0, "Use only the first N photos (0 = all).",
                                   lower_bound=0)
flags.mark_flags_as_required(["data", "model_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from vec2face_tf import config as config_lib
    from vec2face_tf.training import trainer

    overrides = list(_CONFIG.value)
    if _ENGINE.value:
        overrides.append(f"engine={_ENGINE.value}")
    if _STUDENT_STEPS.value is not None:
        overrides.append(f"train.student_steps={_STUDENT_STEPS.value}")
    if _STAGE1_STEPS.value is not None:
        overrides.append(f"train.stage1_steps={_STAGE1_STEPS.value}")
    if _STAGE2_STEPS.value is not None:
        overrides.append(f"train.stage2_steps={_STAGE2_STEPS.value}")
    try:
        config = config_lib.get_config(_PRESET.value, overrides)
        result = trainer.train(config, _DATA.value, _MODEL_DIR.value, cache_dir=_CACHE_DIR.value,
                               strategy_name=_STRATEGY.value, workers=_WORKERS.value,
                               max_images=_MAX_IMAGES.value, extra_data=_EXTRA_DATA.value,
                               extra_cache_dir=_EXTRA_CACHE_DIR.value, stage=_STAGE.value,
                               init_from=_INIT_FROM.value, student_from=_STUDENT_FROM.value,
                               student_init_from=_STUDENT_INIT_FROM.value)
    except trainer.EXPECTED_ERRORS as error:
        sys.exit(f"error: {error}")
    print(f"trained: {result.model_dir} (engine queries: {result.engine_queries})")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
