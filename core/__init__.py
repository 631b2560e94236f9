"""The shared core: what the box, the drivers, the fleet server and the tools all stand on.

It imports none of Quanedge's other packages, so every arrow points down to it:

    core.reading        Reading, Quality, RecordClass: the one record a device produces
    core.errors         the exception tree every library error is mapped into at its boundary
    core.validate       checks for untrusted text and numbers (shared by box and server parsers)
    core.backoff        capped, jittered retry delays
    core.compat         Python-version shims (tomllib)
    core.config_reader  the one typed-TOML reader (Table): every error names file, key, value, expectation
    core.seq_ranges     runs of sequence numbers (box drop marks, server gap tracking)
    core.contracts      what box and server agree on: update kinds and states, the telemetry row
"""
