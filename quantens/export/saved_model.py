"""ONE SavedModel of every member: the shared weights once, a signature per member."""

from __future__ import annotations

import os

import numpy as np

from quantens.export.common import tensorflow

__all__ = ["save_serving_model", "serving_functions"]


def serving_functions(ensemble) -> dict:
    """bits -> the traced function of member b (`images` in, `{"logits": ...}` out).

    The ensemble's model under `quantens.bits(b)`, as the SavedModel's
    signatures run it; export uses the same functions as the Keras members'
    outputs in its fidelity checks.
    """
    tf = tensorflow()
    from quantens.bits import bits as bits_scope

    model = ensemble.model
    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, "images")

    def serving(b: int):
        @tf.function(input_signature=[spec])
        def serve(images):
            # the scope is read while tracing: each function is member b
            with bits_scope(b):
                return {"logits": model(images, training=False)}

        return serve

    functions = {b: serving(b) for b in ensemble.bit_widths}
    for fn in functions.values():
        fn.get_concrete_function()  # traced here, once
    return functions


def save_serving_model(ensemble, path: str, functions: dict | None = None) -> dict:
    """Writes ONE SavedModel of all members: shared weights once, a signature each.

    Signatures `serving_bits_<b>` run member b (input `images`, output
    `logits`); `serving_default` runs the target member. `functions`:
    `serving_functions(ensemble)` when the caller has them already. Returns a
    summary (signatures, variable count). The signatures are for inference:
    the quantizers' straight-through gradients are not saved.

    ```python
    import os, tempfile
    import numpy as np
    import tensorflow as tf
    import quantens
    from quantens.export import save_serving_model
    from zoo import create_model

    ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8), (32, 1))
    path = os.path.join(tempfile.mkdtemp(), "saved_model")
    save_serving_model(ensemble, path)
    loaded = tf.saved_model.load(path)
    logits = loaded.signatures["serving_bits_1"](images=np.zeros((2, 8, 8, 1), "float32"))
    ```
    """
    tf = tensorflow()
    functions = functions or serving_functions(ensemble)
    module = tf.Module()
    module.shared_variables = _distinct_variables(ensemble.model)  # each shared weight once
    # the signatures only: a tf.function kept as an attribute too would be traced
    # again by the saver (as long again as tracing it the first time)
    signatures = {f"serving_bits_{b}": functions[b].get_concrete_function()
                  for b in ensemble.bit_widths}
    signatures["serving_default"] = signatures[f"serving_bits_{ensemble.target_bits}"]
    # without the custom gradients (STE) of every quantizer: tracing them for the
    # file took as long as writing it, and serving never differentiates
    tf.saved_model.save(module, path, signatures=signatures,
                        options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
    variables = module.shared_variables
    return {
        "path": os.path.basename(path),
        "signatures": {name: (ensemble.target_bits if name == "serving_default"
                              else int(name.rsplit("_", 1)[1])) for name in signatures},
        "variables": len(variables),
        "parameters": int(sum(np.prod(v.shape) for v in variables)),
        "bytes": _tree_bytes(path),
    }


def _distinct_variables(model) -> list:
    seen, result = set(), []
    for v in model.weights:
        v = getattr(v, "latent_variable", v)
        if id(v) not in seen:
            seen.add(id(v))
            result.append(v)
    return result


def _tree_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f))
               for root, _, files in os.walk(path) for f in files)
