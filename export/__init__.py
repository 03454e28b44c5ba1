"""absl binaries for export: flags only; the logic lives in vec2face_tf.export."""
