r"""Exports a training run's generator: the onnx format.

  vec2face-export-onnx --model_dir=runs/dlib64 --export_base=exports --model_name=vec2face

Layout, signatures and the TF Serving command: README "Deploy" and vec2face_tf/export/.
"""

from absl import app

from vec2face_tf.export import cli

FLAGS = cli.define_flags(fixed_format="onnx")


def run():
    app.run(lambda argv: cli.main(argv, FLAGS, fixed_format="onnx"))


if __name__ == "__main__":
    run()
