"""Export every member of a shared-weight ensemble on its own.

```
python -m quantens.export RESULT_DIR
```

(`quantens.cli.export`) reads a result directory of `train.py` (`config.json`,
`model.json`, `ensemble.weights.h5`) and writes `RESULT_DIR/export/`; `train.py
--export` hands its trained ensemble and datasets straight to `export_ensemble`:

```
saved_model/         ONE SavedModel: the shared weights once, a serving signature per
                     member (serving_bits_32 ... serving_bits_1), the target member
                     as serving_default
member_<b>.tflite    one flatbuffer per member:
                       32 and 9..31 bits  float32, the quantizers inlined
                       2..8 bits          full-integer int8; the quantized convolutions'
                                          weights and inputs lie on the member's own
                                          k-bit grid (float32 input and output); filters
                                          whose integers fit -8..7 stored as packed INT4
                       1 bit              Larq Compute Engine: bitpacked binary
                                          convolutions (LceBconv2d); the other
                                          layers' filters int8 wherever int8 holds
                                          them exactly
export.json          per member: file, bytes, op histogram, and on the test split
                     top-1 agreement with the Keras member, max |logit difference|,
                     accuracy of the TFLite file; for the 1-bit member what is
                     binarized, int8 and float32 (`lce`); seconds per phase; from
                     train.py and export_result_dir also `input_preprocessing`:
                     the inputs every file takes (name, formula with numbers)
```

The directory is written under a temporary name beside `export/` and renamed
into place at the end, so a failed export leaves nothing half-written.

A mix of per-layer bits (`QuantEnsemble.member(policy)`) is one file,
`export_member(ensemble, policy, path, ...)`: int8 when every layer is at
2..8 bits (each filter on its own layer's grid, INT4 where that fits), LCE
when a layer is at 1 bit, float32 when one is above 8 bits (`member_format`);
its record is an export.json member entry with the policy. `member_bytes(
ensemble, policy)` counts a member's or a mix's file without exporting it:
int8 files to the byte, LCE and float32 mixes as estimates (`quantens.export.size`).

The modules, one idea each, each importing only those above it:

```
common        TensorFlow on demand, quiet converters, batches of data
flatbuffer    reading TFLite files: operators, int8 weights, input quantization
runtime       running TFLite files (TensorFlow Lite and Larq Compute Engine)
steps         one typed dataclass per kind of op (ConvStep, AffineStep, ...)
graph         StepGraph: a member's steps and the questions emitters ask
builder       the walk of a member's Keras graph that makes its steps (kernel
              layers through their `quantens.registry` entry; BN folded into
              the convolution before it)
emit          the float emitter (the member's own arithmetic) and `calibrate`
int8          the int8 emitter and full-integer files on the member's grid
int8_filters  float filters stored as int8 where that is exact (LCE files)
lce           the LCE emitter: the 1-bit member's binary convolutions
int4          packed 4-bit filters (rewrites an int8 file)
member        MemberGraph: a member's steps with `forward` in any mode
tflite        which format a member (or a mix) gets, and its file
saved_model   ONE SavedModel of every member, a signature per member
fidelity      how a member file agrees with its Keras member
size          a file's bytes counted without exporting it (`member_bytes`)
ensemble_export  `export_ensemble`: the export directory; `export_member`: one file
result_dir    a finished run's directory
```

(`tests/test_docs.py` checks this order against the imports, function-level
ones included.)

Members of zoo models and of `quantens.quantize_model` conversions (depthwise,
separable and 1-D convolutions, ReLU6 on its k-bit grid, layers without
weights, TF ops) are exported alike; a layer export cannot take is one
`ExportError` line naming it.

How the int8 members stay on their grid (see `quantens.export.int8`): a
DoReFa kernel takes values (2i - n)/n with n = 2^k - 1, so the BN-folded
kernel of output channel c is (2i - n) * (A_c / n), stored as the odd
integers 2i - n with per-channel scale |A_c| / n; a k-bit activation on
[0, r] is an int8 tensor of scale r/n and zero point -128. Every other tensor
is int8 with a range calibrated on training data. Filters whose integers all
lie in -8 ... 7 (DoReFa at 2-3 bits, the `narrow` weight grid at 2-4 bits) are
stored as packed INT4, two per byte (see `quantens.export.int4`): the same
integers and scales, checked to give identical outputs with TFLite's builtin
kernels; export.json's `weights_storage` counts INT4 and int8 filters and says
why each int8 one is int8.

The 1-bit member (see `quantens.export.lce`): a convolution with +-1 weights
that reads a 1-bit activation x in {0, r} is rewritten exactly into the +-1
form that LCE binarizes (s = sign(r/2 - x), conv(x, w) = r (sum(w) -
conv(s, w)) / 2, folded into the following BN; `det_sign` members' +-1
inputs directly). Depthwise convolutions and convolutions of full-precision
tensors stay float ops, and their filters on a grid (+-1, or k-bit such as
depthwise kernels held at 8 bits; BN folded in: integers times a scale per
output channel) are stored as int8 with a DEQUANTIZE (`lce_int8="exact"`, the
default): a quarter of the bytes, the same float32 values, so the file still
computes what the member computes (converted MobileNetV2, alpha 0.35, 32x32:
1,179,548 -> 479,032 B, the 8-bit int8 file being 628,496 B).
Full-precision filters (stem, classifier) stay float32. `lce_int8="full"`
makes every layer that is not binarized an int8 op on calibrated ranges, as
in the int8 files: it rounds the tensors that feed 1-bit thresholds, so the
file agrees with its member as an int8 file does (98.9% for
`digits_resnet_e` after 4 epochs, 93.9% for the MobileNetV2-shaped test
model, where the exact files agree on 100%). export.json's `lce` lists the binary
convolutions, the int8 and float32 layers, and the file's `weight_ops`. A
member with nothing to binarize is written as int8 and export.json's
`format_reason` says why.

Fidelity: float32 and LCE files compute what the Keras member computes, up to
float32 rounding (~1e-6); a binary activation whose input lies within that
rounding of its threshold may flip (rare: `differing_examples` in export.json).
An int8 file is exact on the grid but rounds the input, the full-precision
weights and the tensors between grids to 8 bits, and a coarse member flips
activations where that moves a value across a threshold. For `digits_resnet_e`
(width 32) after 4 epochs, the 8-, 4- and 2-bit files agreed with their members
on >= 99.1% of the test images over 8 seeds. Narrow models are more fragile: at
width 8 the 2-bit file agrees on 96.7-98.6% after 4 epochs and 98.6-99.4% after 30.
export.json reports, for each int8 file, how often the Keras member keeps its
prediction when only its input is rounded to int8
(`keras_input_rounding_agreement`).

```python
import tempfile
import numpy as np
import quantens
from quantens.export import export_ensemble
from zoo import create_model

bits = (32, 4, 1)
ensemble = quantens.QuantEnsemble(create_model("digits_resnet_e", width=8, bit_widths=bits), bits)
x = np.random.default_rng(0).normal(size=(16, 8, 8, 1)).astype("float32")
report = export_ensemble(ensemble, tempfile.mkdtemp(), val_data=x, calibration_data=x)
print(report["members"]["4"]["bytes"])
```
"""

from __future__ import annotations

import quantens  # noqa: F401  (selects tf-keras before TensorFlow loads)
from quantens.errors import ExportError
from quantens.export.builder import GraphBuilder, build_graph, supported_layers
from quantens.export.emit import MAX_CALIBRATION_EXAMPLES, FloatEmitter, calibrate
from quantens.export.ensemble_export import (
    EXPORT_REPORT_FILE,
    SAVED_MODEL_DIR,
    export_ensemble,
    export_member,
    remove_stale_exports,
    summary_table,
)
from quantens.export.fidelity import DIFFERING_LOGIT_DIFF, fidelity
from quantens.export.flatbuffer import (
    input_quantization,  # noqa: F401  (as before)
    int8_conv_weights,
    op_counts,
    weight_ops,
)
from quantens.export.graph import StepGraph
from quantens.export.int8 import Int8Emitter, weights_report  # noqa: F401  (as before)
from quantens.export.lce import LceEmitter
from quantens.export.member import MemberGraph
from quantens.export.result_dir import (
    export_datasets,
    export_result_dir,
    input_preprocessing_field,
    load_result_ensemble,
    read_result_config,
)
from quantens.export.runtime import TFLiteRunner
from quantens.export.saved_model import save_serving_model, serving_functions
from quantens.export.size import MemberSizes, member_bytes, member_sizes, weight_bytes
from quantens.export.tflite import (
    FLOAT32,
    INT8,
    INT8_BITS,
    LCE,
    convert,
    convert_member,
    member_file,
    member_format,
)


def __getattr__(name: str):
    # computed on first use: the registry loads TensorFlow, which importing
    # quantens.export does not (the command line sets TensorFlow's logging first)
    if name == "SUPPORTED_LAYERS":
        return supported_layers()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "DIFFERING_LOGIT_DIFF", "EXPORT_REPORT_FILE", "ExportError", "FLOAT32", "FloatEmitter",
    "GraphBuilder", "INT8", "INT8_BITS", "Int8Emitter", "LCE", "LceEmitter",
    "MAX_CALIBRATION_EXAMPLES", "SAVED_MODEL_DIR", "SUPPORTED_LAYERS", "MemberGraph",
    "MemberSizes", "StepGraph", "TFLiteRunner", "build_graph", "calibrate", "convert",
    "convert_member", "export_datasets", "export_ensemble", "export_member", "export_result_dir",
    "fidelity", "input_preprocessing_field", "int8_conv_weights", "load_result_ensemble",
    "member_bytes", "member_file", "member_format", "member_sizes", "op_counts",
    "read_result_config", "remove_stale_exports", "save_serving_model", "serving_functions",
    "summary_table", "supported_layers", "weight_bytes", "weight_ops",
]
