"""Edge models: small models trained here, exported to ONNX, run by onnxruntime on the box.

    <model>/train.py      dev only (scikit-learn + skl2onnx): seeded data -> fit -> model.onnx + manifest
    <model>/data.py       dev only: the seeded data sets (hil_tests physics) and held-out evaluation
    <model>/model.onnx    the shipped model; <model>/manifest.toml names it, its sha256 and metrics
    manifest.py           manifest reading (tomllib) and writing; ModelLoadError
    runtime.py            OnnxModel.load (hash check, one-thread session) / infer; ModelRunError
    features.py           numpy features, shared by training and the box (no train/serve skew)
    windows.py            per-(device, channel) ring buffers at a model's sample period
    heads.py              per model kind: rows to run, outputs to readings and alarms
    cli.py                `quanedge models list | verify | train | evaluate`

On a box only manifest, runtime, features, windows and heads are imported (numpy, onnxruntime);
the agent's pipeline stage is `agent.inference.InferenceStage`.
"""
