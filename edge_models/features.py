"""Feature extraction, shared by training and by the box (numpy only).

The same functions turn windows into model inputs in `train.py` and in the agent's inference
stage, so there is no train/serve skew to chase. Every function is vectorised over rows: one
call per batch, never one per device. A manifest lists the feature names it was trained on and
the runtime refuses a model whose list differs from the one here.

Windows are float64 arrays, oldest sample first, at the manifest's sample period.
"""

from __future__ import annotations

import numpy as np

# --- sensor fault detector -----------------------------------------------------------------
FAULT_CHANNELS = ("air_temperature", "relative_humidity", "air_pressure", "wind_speed")
FAULT_CONTEXT = "rain_intensity"
FAULT_CLASSES = ("ok", "stuck", "spike", "drift", "dead")
# typical sample-to-sample variability, and the WXT530 range ends (rails)
_F_SCALE = np.array([1.0, 3.0, 0.5, 1.0])
_F_LO = np.array([-52.0, 0.0, 600.0, 0.0])
_F_HI = np.array([60.0, 100.0, 1100.0, 60.0])

FAULT_FEATURES = (
    "run_tail", "frac_flat", "log_diff", "log_resid", "slope", "slope_recent", "last_z", "last_jump",
    "step_into_flat", "rail_dist", "hour_sin", "hour_cos",
    "is_temperature", "is_humidity", "is_pressure", "is_wind",
    "ctx_slope_temperature", "ctx_slope_humidity", "ctx_slope_pressure", "ctx_slope_wind",
    "ctx_recent_temperature", "ctx_recent_humidity", "ctx_recent_pressure", "ctx_recent_wind",
    "ctx_rain_max", "ctx_humidity",
)


def local_hour(ts: np.ndarray, utc_offset_h: float) -> np.ndarray:
    return np.mod(np.asarray(ts, dtype=np.float64) / 3600.0 + utc_offset_h, 24.0)


def _slog(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def median(x: np.ndarray) -> np.ndarray:
    """Median over the last axis; same values as np.median, several times faster on short rows."""
    n = x.shape[-1]
    s = np.sort(x, axis=-1)
    if n % 2:
        return s[..., n // 2]
    return s[..., n // 2 - 1: n // 2 + 1].mean(axis=-1)


def robust_slope(w: np.ndarray, period_s: float) -> np.ndarray:
    """Units per hour from the medians of the first and last thirds (old spikes do not move it)."""
    n = w.shape[-1]
    k = max(n // 3, 1)
    a = median(w[..., :k])
    b = median(w[..., n - k:])
    return (b - a) / ((n - k) * period_s / 3600.0)


def _run_tail(w: np.ndarray) -> np.ndarray:
    """Length of the trailing run of identical values (1 = the last value differs from the one before)."""
    differs = (w != w[:, -1:])[:, ::-1]  # newest first
    n = w.shape[1]
    return np.where(differs.any(axis=1), np.argmax(differs, axis=1), n).astype(np.float64)


def fault_context(context: np.ndarray, period_s: float) -> np.ndarray:
    """Per-device context, computed once per device however many of its channels are judged.

    context: (D, 5, N) windows of FAULT_CHANNELS + rain_intensity -> (D, 10) scaled slopes over the
    window and over the last 20 samples, rain maximum, newest humidity.
    """
    n = context.shape[-1]
    recent = min(20, n)
    slopes = robust_slope(context[:, :4, :], period_s) / _F_SCALE
    slopes_recent = robust_slope(context[:, :4, n - recent:], period_s) / _F_SCALE
    rain_max = np.log1p(np.clip(context[:, 4, :].max(axis=1), 0.0, None))
    return np.column_stack([slopes, slopes_recent, rain_max, context[:, 1, -1] / 100.0])


def fault_features(
    own: np.ndarray,
    channel: np.ndarray,
    context: np.ndarray,
    hour: np.ndarray,
    period_s: float,
    device: np.ndarray | None = None,
) -> np.ndarray:
    """Rows are (device, judged channel).

    own: (R, N) the judged channel's window; channel: (R,) index into FAULT_CHANNELS;
    context: (D, 5, N) the devices' windows of FAULT_CHANNELS + rain_intensity; device: (R,)
    row -> context index (default: one context per row); hour: (R,) local hour of the newest sample.
    """
    r, n = own.shape
    rows = np.arange(r)
    ctx = fault_context(context, period_s)
    ctx = ctx if device is None else ctx[device]
    scale = _F_SCALE[channel]
    ad = np.abs(np.diff(own, axis=1))
    run = _run_tail(own)
    frac_flat = (ad == 0).mean(axis=1)
    trimmed = np.sort(ad, axis=1)[:, : max(n - 3, 1)]  # drop the largest two diffs (an old spike)
    log_diff = np.log10(trimmed.mean(axis=1) / scale + 1e-3)
    slope_scaled = ctx[rows, channel]            # robust slope / scale, over the window
    slope_recent = ctx[rows, 4 + channel]        # ... and over the last 20 samples
    t = np.arange(n) - (n - 1) / 2.0
    resid = own - median(own)[:, None] - (slope_scaled * scale * period_s / 3600.0)[:, None] * t
    mad = median(np.abs(resid - median(resid)[:, None]))
    log_resid = np.log10(mad / scale + 1e-3)
    prev = own[:, -11:-1]
    med_prev = median(prev)
    noise = median(np.abs(np.diff(prev, axis=1))) + 0.1 * scale
    last_z = _slog((own[:, -1] - med_prev) / noise)
    last_jump = _slog((own[:, -1] - own[:, -2]) / scale)
    run_i = run.astype(np.int64)
    has_step = (run_i >= 2) & (run_i < n)
    idx = np.clip(n - run_i, 1, n - 1)
    step = np.where(has_step, np.abs(own[rows, idx] - own[rows, idx - 1]) / scale, 0.0)
    last = own[:, -1]
    rail = np.minimum(np.minimum(np.abs(last - _F_LO[channel]), np.abs(last - _F_HI[channel])), np.abs(last))
    onehot = np.zeros((r, len(FAULT_CHANNELS)))
    onehot[rows, channel] = 1.0
    feats = np.column_stack([
        run / n, frac_flat, log_diff, log_resid, np.clip(slope_scaled, -50, 50),
        np.clip(slope_recent, -50, 50), last_z, last_jump,
        np.log1p(step), np.log10(rail / scale + 1e-2),
        np.sin(2 * np.pi * hour / 24.0), np.cos(2 * np.pi * hour / 24.0),
        onehot, np.clip(ctx[:, :8], -50, 50), ctx[:, 8:],
    ])
    return feats.astype(np.float32)


# --- rain nowcast --------------------------------------------------------------------------
NOWCAST_CHANNELS = ("air_pressure", "relative_humidity", "air_temperature", "wind_speed", "rain_intensity")
NOWCAST_FEATURES = (
    "dp10", "dp30", "dp60", "dp_accel", "rh", "drh10", "drh30", "dt10", "dt30",
    "wind", "dwind20", "rain", "rain_mean10", "rain_max60", "drain5",
)


def _end_mean(w: np.ndarray, k: int = 3) -> np.ndarray:
    return w[..., -k:].mean(axis=-1)


def _mean_at(w: np.ndarray, back: int, k: int = 3) -> np.ndarray:
    """Mean of k samples centred `back` samples before the last one."""
    n = w.shape[-1]
    i = n - 1 - back
    lo, hi = max(i - k // 2, 0), min(i + k // 2 + 1, n)
    return w[..., lo:hi].mean(axis=-1)


def nowcast_features(win: np.ndarray) -> np.ndarray:
    """win: (R, 5, 60) windows of NOWCAST_CHANNELS at one-minute samples."""
    p, rh, ta, ws, rain = (win[:, i, :] for i in range(5))
    n = win.shape[-1]
    p_now = _end_mean(p)
    dp10 = p_now - _mean_at(p, 10)
    dp30 = p_now - _mean_at(p, 30)
    dp60 = p_now - p[:, :3].mean(axis=1)
    dp_accel = dp30 - (_mean_at(p, 30) - p[:, :3].mean(axis=1))
    rh_now = _end_mean(rh)
    feats = np.column_stack([
        dp10, dp30, dp60, dp_accel,
        rh_now / 100.0, (rh_now - _mean_at(rh, 10)) / 10.0, (rh_now - _mean_at(rh, 30)) / 10.0,
        _end_mean(ta) - _mean_at(ta, 10), _end_mean(ta) - _mean_at(ta, 30),
        _end_mean(ws), _end_mean(ws) - _mean_at(ws, 20),
        np.log1p(np.clip(rain[:, -1], 0, None)), np.log1p(np.clip(rain[:, -10:].mean(axis=1), 0, None)),
        np.log1p(np.clip(rain.max(axis=1), 0, None)), rain[:, -1] - rain[:, n - 6],
    ])
    return feats.astype(np.float32)


# --- traffic demand ------------------------------------------------------------------------
TRAFFIC_CHANNELS = ("volume", "occupancy")
TRAFFIC_FEATURES = (
    "v1", "v2", "v3", "v_mean6", "v_mean12", "v_trend", "log_level", "occ1", "occ_mean3",
    "occ_max12", "tod_sin", "tod_cos", "tod_sin2", "tod_cos2", "weekday",
)
TRAFFIC_HORIZON_S = 900.0


def traffic_level(vol: np.ndarray) -> np.ndarray:
    """The scale the traffic model works in: recent mean volume plus a floor."""
    return vol[:, -3:].mean(axis=1) + 5.0


def is_weekday(ts: np.ndarray, utc_offset_h: float) -> np.ndarray:
    days = np.floor((np.asarray(ts, dtype=np.float64) / 3600.0 + utc_offset_h) / 24.0)
    return (np.mod(days + 3, 7) < 5).astype(np.float64)


def traffic_features(vol: np.ndarray, occ: np.ndarray, ts: np.ndarray, utc_offset_h: float) -> np.ndarray:
    """vol, occ: (R, 12) per-5-minute windows; ts: (R,) end of the last interval."""
    level = traffic_level(vol)
    target = np.asarray(ts, dtype=np.float64) + TRAFFIC_HORIZON_S
    h = local_hour(target, utc_offset_h) * (2 * np.pi / 24.0)
    feats = np.column_stack([
        vol[:, -1] / level, vol[:, -2] / level, vol[:, -3] / level,
        vol[:, -6:].mean(axis=1) / level, vol.mean(axis=1) / level,
        (vol[:, -3:].mean(axis=1) - vol[:, -6:-3].mean(axis=1)) / level, np.log(level),
        occ[:, -1] / 10.0, occ[:, -3:].mean(axis=1) / 10.0, occ.max(axis=1) / 10.0,
        np.sin(h), np.cos(h), np.sin(2 * h), np.cos(2 * h), is_weekday(target, utc_offset_h),
    ])
    return feats.astype(np.float32)


def traffic_volume(ratio: np.ndarray, vol: np.ndarray) -> np.ndarray:
    """The model predicts volume / level; turn it back into vehicles per 5 minutes."""
    return np.clip(np.asarray(ratio, dtype=np.float64).reshape(-1), 0.0, None) * traffic_level(vol)
