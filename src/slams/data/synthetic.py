"""A seeded synthetic world written in the file formats of ERA5, CPC and NOAA OLR.

The world is defined analytically in space, so every source grid samples the *same* world:
temperature anomalies, the precipitation "weather" field and the land mask are sums of real
spherical harmonics ``Y_lm(phi, lambda)`` (degree ``l <= LMAX``) whose coefficients evolve
in time. Evaluating them on the ERA5, CPC or OLR grid is two small matrix products.

Temperature at height ``z = H ln(1000 / p)`` (``H = 7 km``, no topography) is

    T(t, z, phi, lambda) = T_annual(z, phi, lambda) + S(t, z, phi, lambda) + T'(t, z, phi, lambda)

- ``T_annual``: surface ``Ts = 300.5 - 44 sin^2(phi) - 4 max(0, -sin phi)^4 + sst(phi, lambda)``,
  lapse rate ``Gamma = 6.5 - 1.5 sin^2(phi)`` K/km up to the tropopause
  ``z_tp = 9 + 7 cos^2(phi)`` km, isothermal for 2 km above it, then warming linearly to
  ``T_10 = 230 - 5 sin^2(phi)`` K at 10 hPa (stratosphere warmer than the tropopause).
- ``S``: seasonal cycle ``-A(phi, land) cos(2 pi (doy - lag) / 365.25)`` with
  ``A = sin(phi) |sin(phi)|^0.5 (3 + 14 land)`` (hemispheres opposite, larger at high latitudes
  and over land), damped with height, plus a weaker stratospheric polar cycle.
- ``T' = sum_i a_i(phi, t) v_i(z, phi) F_i(t, phi, lambda)`` for four unit-variance AR(1)
  spectral fields ``F_i``: eastward-travelling synoptic waves (zonal wavenumbers 3-8 favoured,
  profile growing with height in the troposphere and reversing sign above the tropopause),
  a boundary-layer mode (stronger over land), an upper-tropospheric mode and a slow
  stratospheric mode. Amplitudes are ~1 K in the tropics and several K at mid/high latitudes.

Each spectral coefficient follows a complex AR(1)
``c_{t+1} = rho e^{-i omega} c_t + s sqrt(1 - rho^2) xi_t`` (``omega = m Omega`` makes
``Re[c e^{i m lambda}]`` travel east at ``Omega`` per day; lag-1 autocorrelation ~0.85),
carried continuously across years from ``EPOCH_YEAR`` (see ``_World.coefficients``), so the
file of a year does not depend on which other years were requested.

Precipitation (mm/day) is zero-inflated: with ``T_low = T(z = 0.5 km)`` and the instability
``D = 0.8 T'_low - 0.6 T'_500``, the drive is ``d = 0.8 D / std(D) + 0.6 xi + c(phi, t)``
(``xi`` a fast weather field, ``c`` an ITCZ/subtropics wetness pattern) and
``P = 6 exp(0.065 (T_low - 290)) max(d, 0)^1.5`` (Clausius-Clapeyron moisture), with
gauge-scale noise, written over land only (~50-60 % dry days). OLR is
``eps sigma [(1 - f) T_e^4 + f T_cloud^4]`` with ``T_e = 0.7 T(5 km) + 0.3 T(0)``,
cloud fraction ``f = 0.8 (1 - exp(-P / 8))`` and cloud tops at ``0.8 z_tp``, plus retrieval noise.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from slams.grid import area_weights, target_grid

SCALE_HEIGHT_KM = 7.0
LMAX = 20
EPOCH_YEAR = 1900
LAND_AREA_FRACTION = 0.3
STEFAN_BOLTZMANN = 5.670374e-8
OLR_EMISSIVITY = 0.92
CPC_FILL_VALUE = np.float32(-9.96921e36)
# Days evaluated at once: BLOCK_DAYS, and for ERA5 fewer where a day of its grid is large, so
# that a block's arrays stay near BLOCK_BYTES (see block_days). The files do not depend on it.
BLOCK_DAYS = 32
BLOCK_BYTES = 1.5e9
# Floats keep only their leading mantissa bits before zlib ("BitRound"; ERA5 itself is 16-bit
# packed GRIB): 16 bits keep 300 K to ~0.002 K and precip to ~1e-4 relative (12 bits), and
# make the files smaller and faster to write. In this mode ``significant_digits`` counts bits.
_T_QUANTIZE = {"quantize_mode": "BitRound", "significant_digits": 16}
_PRECIP_QUANTIZE = {"quantize_mode": "BitRound", "significant_digits": 12}

# Spectral AR(1) fields: the four temperature anomaly modes, then the fast weather field.
_SYNOPTIC, _BOUNDARY, _UPPER, _STRATOSPHERE, _WEATHER = range(5)


def pressure_to_height(pressure_hpa: np.ndarray | float) -> np.ndarray:
    """Height in km of a pressure level: ``z = H ln(1000 / p)`` with ``H = 7 km``."""
    return SCALE_HEIGHT_KM * np.log(1000.0 / np.asarray(pressure_hpa, dtype=np.float64))


def _legendre(lmax: int, x: np.ndarray) -> np.ndarray:
    """Fully normalised associated Legendre functions ``P_lm(x)``, shape ``(lmax+1, lmax+1, n)``.

    Normalised so that ``P_l0(sin phi)`` and ``P_lm(sin phi) cos(m lambda)`` have mean square 1
    over the sphere (geodesy "4 pi" normalisation; entries with ``m > l`` are zero). Standard
    stable recursion in ``l`` for fixed ``m`` starting from the sectoral ``P_mm``.
    """
    x = np.asarray(x, dtype=np.float64)
    u = np.sqrt(np.clip(1.0 - x**2, 0.0, None))
    p = np.zeros((lmax + 1, lmax + 1, x.size))
    p[0, 0] = 1.0
    for m in range(lmax + 1):
        if m == 1:
            p[1, 1] = np.sqrt(3.0) * u
        elif m > 1:
            p[m, m] = np.sqrt((2 * m + 1) / (2 * m)) * u * p[m - 1, m - 1]
        if m + 1 <= lmax:
            p[m + 1, m] = np.sqrt(2 * m + 3) * x * p[m, m]
        for ell in range(m + 2, lmax + 1):
            a = np.sqrt((2 * ell - 1) * (2 * ell + 1) / ((ell - m) * (ell + m)))
            b = np.sqrt(
                (2 * ell + 1)
                * (ell + m - 1)
                * (ell - m - 1)
                / ((2 * ell - 3) * (ell - m) * (ell + m))
            )
            p[ell, m] = a * x * p[ell - 1, m] - b * p[ell - 2, m]
    return p


class _Basis:
    """Real spherical harmonics on a lat-lon grid; ``evaluate`` maps coefficients to fields."""

    def __init__(self, lat: np.ndarray, lon: np.ndarray, lmax: int = LMAX):
        self.legendre = _legendre(lmax, np.sin(np.deg2rad(lat)))  # (l, m, lat)
        m_lon = np.outer(np.arange(lmax + 1), np.deg2rad(lon))  # (m, lon)
        self.cos, self.sin = np.cos(m_lon), np.sin(m_lon)

    def evaluate(self, coeffs: np.ndarray, dtype: type = np.float64) -> np.ndarray:
        """``f(phi, lambda) = sum_lm Re[c_lm e^{i m lambda}] P_lm(sin phi)``.

        coeffs: ``(..., l, m)`` complex -> ``(..., lat, lon)`` of ``dtype``.
        """
        n_m = self.cos.shape[0]
        partial = np.empty((*coeffs.shape[:-2], self.legendre.shape[-1], n_m), complex)
        for m in range(n_m):  # only l >= m contributes: one small matmul per zonal wavenumber
            partial[..., m] = coeffs[..., m:, m] @ self.legendre[m:, m]
        real, imag = partial.real.astype(dtype), partial.imag.astype(dtype)
        return real @ self.cos.astype(dtype) - imag @ self.sin.astype(dtype)


@dataclass(frozen=True)
class _SpectralAR1:
    """Stationary complex AR(1) coefficients of one unit-variance spectral field."""

    std: np.ndarray  # (l, m) standard deviation of Re and Im parts; 0 where m > l
    decay: np.ndarray  # (l, m) complex rho exp(-i omega)

    @staticmethod
    def make(
        power: np.ndarray, rho: float, omega_deg_per_day: np.ndarray, zonal_weight: np.ndarray
    ) -> _SpectralAR1:
        """power: ``(l,)`` variance per degree; omega_deg_per_day, zonal_weight: ``(l, m)``."""
        ell = np.arange(LMAX + 1)[:, None]
        m = np.arange(LMAX + 1)[None, :]
        valid = m <= ell
        variance = np.where(valid, power[:, None] / (2 * ell + 1), 0.0) * zonal_weight
        # A complex coefficient (m > 0) carries two real modes, each of mean square ``std^2``.
        total = np.sum(np.where(m == 0, 1.0, 2.0) * variance)
        std = np.sqrt(variance / total)
        omega = np.deg2rad(omega_deg_per_day) * m
        return _SpectralAR1(std=std, decay=np.where(valid, rho * np.exp(-1j * omega), 0.0))


class _World:
    """Seed-fixed parameters of the world and the time evolution of its spectral fields."""

    def __init__(self, seed: int):
        self.seed = seed
        rng = np.random.default_rng([seed, 0])
        ell = np.arange(LMAX + 1, dtype=np.float64)
        m = np.arange(LMAX + 1)[None, :]
        ones = np.ones((LMAX + 1, LMAX + 1))

        def bump(centre: float, width: float) -> np.ndarray:
            return np.where(ell >= 1, np.exp(-0.5 * ((ell - centre) / width) ** 2), 0.0)

        # Synoptic waves favour zonal wavenumbers 3-8 and travel east at 3-6 degrees per day.
        synoptic_zonal = np.where((m >= 3) & (m <= 8), 1.0, 0.15) * ones
        self.fields = (
            _SpectralAR1.make(
                bump(8, 3.5), 0.95, rng.uniform(3.0, 6.0, (LMAX + 1, LMAX + 1)), synoptic_zonal
            ),
            _SpectralAR1.make(bump(4, 3.0), 0.85, 2.0 * ones, ones),
            _SpectralAR1.make(bump(6, 3.0), 0.9, 3.0 * ones, ones),
            _SpectralAR1.make(bump(2, 1.5), 0.97, 1.0 * ones, ones),
            _SpectralAR1.make(bump(14, 4.0), 0.5, 8.0 * ones, ones),
        )
        self.land_coeffs = self._static_coeffs(rng, np.where(ell >= 1, np.exp(-ell / 3.0), 0.0))
        self.sst_coeffs = 1.5 * self._static_coeffs(
            rng, np.where((ell >= 1) & (ell <= 5), 1.0, 0.0)
        )
        # Land where the smooth field exceeds its area-weighted quantile on a fine grid.
        lat, lon = target_grid(1.0)
        field = _Basis(lat, lon).evaluate(self.land_coeffs)
        weights = np.broadcast_to(area_weights(lat).values[:, None], field.shape).ravel()
        order = np.argsort(field.ravel())
        cumulative = np.cumsum(weights[order]) / weights.sum()
        index = np.searchsorted(cumulative, 1.0 - LAND_AREA_FRACTION)
        self.land_threshold = field.ravel()[order][index]
        self.land_width = 0.1 * field.std()

    @staticmethod
    def _static_coeffs(rng: np.random.Generator, power: np.ndarray) -> np.ndarray:
        """Random coefficients ``(l, m)`` of a static field with unit spatial variance."""
        spectrum = _SpectralAR1.make(power, 0.0, np.zeros((LMAX + 1, LMAX + 1)), 1.0)
        noise = rng.standard_normal((2, LMAX + 1, LMAX + 1))
        coeffs = spectrum.std * (noise[0] + 1j * noise[1])
        coeffs[:, 0] = coeffs[:, 0].real  # zonal means (m = 0) are real
        return coeffs

    def land_fraction(self, basis: _Basis) -> np.ndarray:
        """Smooth land fraction in [0, 1] on the basis' grid ``(lat, lon)``; land is > 0.5."""
        field = basis.evaluate(self.land_coeffs)
        return 1.0 / (1.0 + np.exp(-(field - self.land_threshold) / self.land_width))

    def _noise(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """Complex standard noise with real m = 0 entries (zonal means are real)."""
        noise = rng.standard_normal((*shape, 2))
        noise[..., 0, 1] = 0.0
        return noise[..., 0] + 1j * noise[..., 1]

    def coefficients(self, years: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(year, coeffs)`` with coeffs ``(days, field, l, m)``, state carried over years.

        The state starts from the stationary distribution at ``EPOCH_YEAR``. Over a year of
        ``n`` days the AR(1) gives ``c_n = decay^n c_0 + J`` with the year's total innovation
        ``J = sum_k decay^(n-1-k) eps_k``, drawn first from the (seed, year) stream. Years
        that are not requested only advance by ``J`` (cheap); requested years draw daily
        innovations conditioned on their sum being ``J``, so a year's data and its end state
        do not depend on which other years were requested.
        """
        if min(years) < EPOCH_YEAR:
            raise ValueError(f"synthetic years must be >= {EPOCH_YEAR}, got {min(years)}")
        std = np.stack([f.std for f in self.fields])
        decay = np.stack([f.decay for f in self.fields])
        innovation = std * np.sqrt(1.0 - np.abs(decay) ** 2)
        state = std * self._noise(np.random.default_rng([self.seed, 1]), std.shape)
        wanted = set(years)
        for year in range(EPOCH_YEAR, max(years) + 1):
            n_days = 366 if pd.Timestamp(year=year, month=1, day=1).is_leap_year else 365
            # Var(J) = var(eps) sum_k |decay|^(2k) = std^2 (1 - |decay|^(2n)).
            jump_std = std * np.sqrt(1.0 - np.abs(decay) ** (2 * n_days))
            jump = jump_std * self._noise(np.random.default_rng([self.seed, 2, year]), std.shape)
            if year not in wanted:
                state = decay**n_days * state + jump
                continue
            eps = innovation * self._noise(
                np.random.default_rng([self.seed, 3, year]), (n_days, *std.shape)
            )
            # Condition the circular Gaussian eps on sum_k a_k eps_k = J:
            # eps_k += conj(a_k) / sum_j |a_j|^2 (J - sum_j a_j eps_j).
            weights = decay ** np.arange(n_days - 1, -1, -1)[:, None, None, None]
            norm = np.sum(np.abs(weights) ** 2, axis=0)
            eps += np.conj(weights) / norm * (jump - np.sum(weights * eps, axis=0))
            out = np.empty_like(eps)
            for day in range(n_days):
                state = decay * state + eps[day]
                out[day] = state
            yield year, out


@dataclass
class _Days:
    """The time-dependent part of the world on one grid for a block of days."""

    doy: np.ndarray  # (t,) day of year
    fields: np.ndarray  # (t, 5, lat, lon) float32 unit-variance spectral fields
    amplitudes: tuple[np.ndarray, ...]  # anomaly amplitudes, broadcastable to (t, lat, lon)
    seasonal: np.ndarray  # (t, lat, lon) float32 surface seasonal anomaly in K
    polar_night: np.ndarray  # (t, lat, 1) stratospheric seasonal anomaly in K


class _GridWorld:
    """The world on one lat-lon grid: static fields at construction, then per block of days."""

    def __init__(self, world: _World, lat: np.ndarray, lon: np.ndarray):
        self.basis = _Basis(lat, lon)
        self.land = world.land_fraction(self.basis)  # (lat, lon)
        phi = np.deg2rad(np.asarray(lat, dtype=np.float64))[:, None]  # (lat, 1)
        self.phi, self.lat_deg = phi, np.rad2deg(phi)
        sin_phi, sin2 = np.sin(phi), np.sin(phi) ** 2
        sst = np.cos(phi) * self.basis.evaluate(world.sst_coeffs)
        self.surface = 300.5 - 44.0 * sin2 - 4.0 * np.clip(-sin_phi, 0, None) ** 4 + sst
        self.lapse = 6.5 - 1.5 * sin2  # K/km
        self.z_tropopause = 9.0 + 7.0 * np.cos(phi) ** 2  # km
        self.t_tropopause = self.surface - self.lapse * self.z_tropopause
        # Linear warming from 2 km above the tropopause to T_10 at 10 hPa.
        z_10 = pressure_to_height(10.0)
        self.strat_slope = (230.0 - 5.0 * sin2 - self.t_tropopause) / (
            z_10 - self.z_tropopause - 2.0
        )
        # Surface seasonal cycle -A cos(2 pi (doy - lag) / 365.25), oceans lag more.
        amplitude = sin_phi * np.sqrt(np.abs(sin_phi)) * (3.0 + 14.0 * self.land)
        lag = 2 * np.pi * (15.0 + 20.0 * (1.0 - self.land)) / 365.25
        self.seasonal_cos, self.seasonal_sin = -amplitude * np.cos(lag), -amplitude * np.sin(lag)
        self.polar_night = -sin_phi * np.abs(sin_phi) * 6.0
        self.boundary_amplitude = (0.5 + 1.5 * (1.0 - np.exp(-((self.lat_deg / 35.0) ** 2)))) * (
            1.0 + 0.8 * self.land
        )

    def days(self, doy: np.ndarray, coeffs: np.ndarray) -> _Days:
        """Evaluate the spectral coefficients ``(t, 5, l, m)`` of a block of days ``doy``."""
        angle = 2 * np.pi * doy / 365.25
        seasonal = (
            np.cos(angle)[:, None, None] * self.seasonal_cos
            + np.sin(angle)[:, None, None] * self.seasonal_sin
        ).astype(np.float32)
        season = np.cos(2 * np.pi * (doy - 15.0) / 365.25)[:, None, None]
        winter = np.tanh(self.lat_deg / 10.0) * season  # +1 in each hemisphere's mid-winter
        envelope = 1.0 - np.exp(-((self.lat_deg / 28.0) ** 2))
        # Synoptic ~1 K in the tropics and ~4 K outside, stronger in winter; boundary layer
        # stronger over land; upper troposphere; stratosphere strongest in the polar winter.
        amplitudes = (
            (0.9 + 3.4 * envelope) * (1.0 + 0.25 * winter),
            self.boundary_amplitude[None],
            (0.6 + 2.4 * envelope)[None],
            (0.5 + 3.5 * np.sin(self.phi) ** 2) * (1.0 + 0.6 * winter),
        )
        polar_night = self.polar_night * np.cos(2 * np.pi * (doy - 10.0) / 365.25)[:, None, None]
        fields = self.basis.evaluate(coeffs, np.float32)
        return _Days(doy, fields, amplitudes, seasonal, polar_night)

    def profiles(self, z: np.ndarray | float) -> tuple[np.ndarray, ...]:
        """Vertical profiles ``v_i(z)`` (lat, 1) of the four anomaly modes; z scalar or (lat, 1).

        Synoptic: ``0.75 + 0.45 z / z_tp`` below the tropopause, ``1.2 - 1.9 tanh((z - z_tp)/3)``
        above (sign reversal); boundary layer ``exp(-z / 1.5 km)``; upper troposphere
        ``exp(-((z - 0.75 z_tp) / 2.5 km)^2)``; stratosphere ``clip((z - z_tp) / 12 km, 0, 1.5)``.
        """
        ztp = self.z_tropopause
        above = z - ztp
        synoptic = np.where(above <= 0, 0.75 + 0.45 * z / ztp, 1.2 - 1.9 * np.tanh(above / 3.0))
        boundary = np.broadcast_to(np.exp(-np.asarray(z) / 1.5), ztp.shape)
        upper = np.exp(-(((z - 0.75 * ztp) / 2.5) ** 2))
        stratosphere = np.clip(above / 12.0, 0.0, 1.5)
        return synoptic, boundary, upper, stratosphere

    def anomaly(
        self, weighted_heights: list[tuple[float, np.ndarray | float]], days: _Days
    ) -> tuple[np.ndarray, np.ndarray]:
        """``sum_z w_z T'(z)`` (t, lat, lon) over ``(w_z, z)`` pairs, and its implied std.

        ``T'(z) = sum_i a_i v_i(z) F_i``, so the combination is ``sum_i c_i F_i`` with
        ``c_i = a_i sum_z w_z v_i(z)`` and std ``sqrt(sum_i c_i^2)`` (unit-variance ``F_i``).
        """
        profiles = [(w, self.profiles(z)) for w, z in weighted_heights]
        total = np.zeros(days.fields[:, 0].shape, np.float32)
        variance = 0.0
        for i, amplitude in enumerate(days.amplitudes):
            vertical = sum(w * p[i] for w, p in profiles)
            coefficient = (amplitude * vertical).astype(np.float32)
            total += coefficient * days.fields[:, i]
            variance = variance + coefficient**2
        return total, np.sqrt(variance)

    def temperature(self, z: np.ndarray | float, days: _Days) -> np.ndarray:
        """Total temperature ``T_annual(z) + S(t, z) + T'(t, z)`` in K: (t, lat, lon) float32."""
        ztp = self.z_tropopause
        troposphere = self.surface - self.lapse * z
        stratosphere = self.t_tropopause + self.strat_slope * np.clip(z - ztp - 2.0, 0.0, None)
        annual = np.where(z <= ztp, troposphere, stratosphere).astype(np.float32)
        # The surface seasonal cycle is damped with height and fades above the tropopause.
        damping = (0.3 + 0.7 * np.exp(-np.minimum(z, ztp) / 2.0)) * np.exp(
            -np.clip(z - ztp, 0.0, None) / 3.0
        )
        out = days.seasonal * damping.astype(np.float32)
        out += annual
        out += (days.polar_night * np.clip((z - ztp) / 8.0, 0.0, 1.0)).astype(np.float32)
        out += self.anomaly([(1.0, z)], days)[0]
        return out

    def rain(self, days: _Days) -> tuple[np.ndarray, np.ndarray]:
        """Rain drive ``d`` (~unit std, rain where > 0) and moisture ``6 exp(0.065 (T_low - 290))``.

        ``d = 0.8 D / std(D) + 0.6 xi + c(phi, t)`` with the instability
        ``D = 0.8 T'(0.5 km) - 0.6 T'(500 hPa)``, the weather field ``xi`` and a wetness
        pattern ``c``: ITCZ (following the sun by 7 degrees), dry subtropics, moist storm tracks.
        """
        z_500 = float(pressure_to_height(500.0))
        instability, spread = self.anomaly([(0.8, 0.5), (-0.6, z_500)], days)
        itcz = 7.0 * np.sin(2 * np.pi * (days.doy - 105.0) / 365.25)[:, None, None]
        wetness = (
            np.exp(-(((self.lat_deg - itcz) / 10.0) ** 2))
            - 0.9 * np.exp(-(((np.abs(self.lat_deg) - 25.0) / 8.0) ** 2))
            + 0.2 * np.exp(-(((np.abs(self.lat_deg) - 50.0) / 15.0) ** 2))
            - 0.1
        )
        drive = 0.8 * instability / spread + 0.6 * days.fields[:, _WEATHER] + wetness
        moisture = 6.0 * np.exp(0.065 * (self.temperature(0.5, days) - 290.0))
        return drive.astype(np.float32), moisture.astype(np.float32)

    def olr(self, days: _Days) -> np.ndarray:
        """``eps sigma [(1 - f) T_e^4 + f T_cloud^4]`` in W m-2: (t, lat, lon).

        ``T_e = 0.7 T(5 km) + 0.3 T(0)``, cloud fraction ``f = 0.8 (1 - exp(-P / 8 mm/day))``
        from the smooth rain rate ``P = moisture max(d, 0)^1.5``, cloud tops at ``0.8 z_tp``.
        """
        drive, moisture = self.rain(days)
        cloud = 0.8 * (1.0 - np.exp(-_rain_rate(drive, moisture) / 8.0))
        t_emission = 0.7 * self.temperature(5.0, days) + 0.3 * self.temperature(0.0, days)
        t_cloud = self.temperature(0.8 * self.z_tropopause, days)
        flux = (1.0 - cloud) * t_emission**4 + cloud * t_cloud**4
        return OLR_EMISSIVITY * STEFAN_BOLTZMANN * flux


def _rain_rate(drive: np.ndarray, moisture: np.ndarray) -> np.ndarray:
    """Rain rate in mm/day: ``moisture max(d, 0)^1.5`` (zero where the drive is negative)."""
    return moisture * np.clip(drive, 0.0, None) ** 1.5


def _node_grid(resolution: float) -> tuple[np.ndarray, np.ndarray]:
    """Node grid with poles: lat 90, 90-r, ..., -90 (descending) and lon 0, r, ..., 360-r."""
    n_lat = target_grid(resolution)[0].size  # also checks that r divides 180
    return np.linspace(90.0, -90.0, n_lat + 1), resolution * np.arange(2 * n_lat)


def _centre_grid(resolution: float) -> tuple[np.ndarray, np.ndarray]:
    """Cell-centred grid with descending lat 90-r/2 .. -90+r/2 and lon r/2 .. 360-r/2."""
    lat, lon = target_grid(resolution)
    return lat[::-1].copy(), lon


class _Stream:
    """One source's file of one year, created empty and filled a block of days at a time.

    The layout is that of the real source (the CDS's ERA5, NOAA PSL's CPC and OLR): the data
    variable ``(time, ...)`` zlib-compressed (level 1, shuffle) one day per chunk, a CF time
    coordinate in the source's own units, float64 coordinates with their attributes. Floats
    are quantised by the netCDF library (``quantize``: BitRound bits), packed integers by
    :meth:`write` (``packing``: dtype, ``scale_factor``, ``add_offset``), and NaN is stored as
    ``fill`` (also written as ``missing_value``). Memory holds one block, whatever the grid.
    """

    def __init__(
        self,
        path: Path,
        name: str,
        dims: tuple[str, ...],
        times: pd.DatetimeIndex,
        time_encoding: tuple[str, str],
        coords: dict[str, tuple[np.ndarray, dict]],
        attrs: dict,
        seed: int,
        quantize: dict | None = None,
        packing: dict | None = None,
        fill=None,
        scalars: dict[str, int] | None = None,
    ):
        import netCDF4

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.packing, self.fill = packing, fill
        self.nc = netCDF4.Dataset(path, "w", format="NETCDF4")
        self.nc.setncatts(
            {"Conventions": "CF-1.7", "source": f"slams synthetic world (seed {seed})"}
        )
        time_dim, *space = dims
        units, dtype = time_encoding
        self.nc.createDimension(time_dim, len(times))
        for dim in space:
            self.nc.createDimension(dim, len(coords[dim][0]))
        time = self.nc.createVariable(time_dim, dtype, (time_dim,))
        time.setncatts({"units": units, "calendar": "proleptic_gregorian"})
        unit, origin = units.split(" since ")
        step = pd.Timedelta(1, unit={"seconds": "s", "hours": "h"}[unit])
        origin = pd.Timestamp(origin.replace(":0.0", ":00"))
        time[:] = np.asarray((times - origin) / step, dtype)
        for dim in space:
            values, dim_attrs = coords[dim]
            variable = self.nc.createVariable(dim, "f8", (dim,), fill_value=np.nan)
            variable.setncatts(dim_attrs)
            variable[:] = values
        for scalar, value in (scalars or {}).items():
            self.nc.createVariable(scalar, "i8", ())[...] = value
        self.variable = self.nc.createVariable(
            name,
            packing["dtype"] if packing else "f4",
            dims,
            zlib=True,
            complevel=1,
            shuffle=True,
            chunksizes=(1, *(len(coords[dim][0]) for dim in space)),
            fill_value=fill,
            **(quantize or {}),
        )
        extra = {"missing_value": fill} if fill is not None else {}
        if packing:
            extra |= {"scale_factor": packing["scale_factor"], "add_offset": packing["add_offset"]}
            self.variable.set_auto_scale(False)  # packed here, exactly as CF decoding inverts
        self.variable.set_auto_mask(False)  # NaN -> fill here
        self.variable.setncatts({**attrs, **extra})
        if scalars:
            self.variable.coordinates = " ".join(scalars)

    def write(self, block: slice, values: np.ndarray) -> None:
        """Store ``values`` (float, NaN where missing) as the days ``block`` of the year. Without
        a fill value (ERA5, the largest block) the values go to the library as they are."""
        stored = values.astype(np.float32, copy=False)
        if self.packing:
            # in float32, as xarray's CF encoder packs a float32 field into int16
            offset, scale = (np.float32(self.packing[k]) for k in ("add_offset", "scale_factor"))
            stored = np.around((stored - offset) / scale).astype(self.packing["dtype"])
        elif self.fill is not None:
            stored = stored.copy()  # the caller's array stays as it was
        if self.fill is not None:
            stored[np.isnan(values)] = self.fill
        self.variable[block] = stored

    def close(self) -> None:
        self.nc.close()


_LAT_ATTRS = {"units": "degrees_north", "standard_name": "latitude", "long_name": "latitude"}
_LON_ATTRS = {"units": "degrees_east", "standard_name": "longitude", "long_name": "longitude"}


def _era5_stream(path, times, levels, lat, lon, seed) -> _Stream:
    """CDS-style ERA5: t (valid_time, pressure_level, latitude, longitude), float32 in K."""
    coords = {
        "pressure_level": (levels, {"units": "hPa"}),
        "latitude": (lat, _LAT_ATTRS),
        "longitude": (lon, _LON_ATTRS),
    }
    attrs = {"units": "K", "long_name": "Temperature", "standard_name": "air_temperature"}
    dims = ("valid_time", "pressure_level", "latitude", "longitude")
    time = ("seconds since 1970-01-01", "i8")
    return _Stream(path, "t", dims, times, time, coords, attrs, seed, _T_QUANTIZE,
                   scalars={"number": 0})  # fmt: skip


def _cpc_stream(path, times, lat, lon, seed) -> _Stream:
    """NOAA PSL CPC-style daily totals: precip (time, lat, lon) in "mm", NaN as fill value."""
    attrs = {
        "units": "mm",
        "long_name": "Daily total of precipitation",
        "var_desc": "Precipitation",
    }
    coords = {"lat": (lat, _LAT_ATTRS), "lon": (lon, _LON_ATTRS)}
    time = ("hours since 1900-01-01 00:00:00", "f8")
    return _Stream(path, "precip", ("time", "lat", "lon"), times, time, coords, attrs, seed,
                   _PRECIP_QUANTIZE, fill=CPC_FILL_VALUE)  # fmt: skip


def _olr_stream(path, times, lat, lon, seed) -> _Stream:
    """NOAA interpolated OLR-style: olr (time, lat, lon) packed as int16 with scale/offset."""
    attrs = {"units": "W/m^2", "long_name": "OLR daily interpolated"}
    coords = {"lat": (lat, _LAT_ATTRS), "lon": (lon, _LON_ATTRS)}
    time = ("hours since 1800-01-01 00:00:0.0", "f8")
    packing = {"dtype": "i2", "scale_factor": 0.01, "add_offset": 327.65}
    return _Stream(path, "olr", ("time", "lat", "lon"), times, time, coords, attrs, seed,
                   packing=packing, fill=np.int16(32767))  # fmt: skip


def block_days(era5_cells: int, levels: int) -> int:
    """Days per block of ERA5: ``BLOCK_DAYS``, or fewer where the block would hold more than
    ``BLOCK_BYTES``. A day costs ~``4 (levels + 30)`` bytes per ERA5 grid point: the float32
    levels, the five spectral fields in float32 and their float64 evaluation, and the
    temporaries (measured: 5.1 GB peak for 32-day blocks of 10 levels at 0.25 degrees, ~160 MB
    a day; 9 days there)."""
    per_day = 4.0 * (levels + 30) * era5_cells
    return int(max(1, min(BLOCK_DAYS, BLOCK_BYTES // per_day)))


def write_synthetic(
    out_dir: str | Path,
    years: list[int],
    levels: list[float],
    seed: int,
    era5_resolution: float,
    cpc_resolution: float,
    olr_resolution: float,
) -> None:
    """Write ``out_dir/{era5,cpc,olr}/{year}.nc`` for each year of the seeded synthetic world.

    - era5: ``t`` (K) dims ``(valid_time, pressure_level, latitude, longitude)``, node grid with
      poles, latitude descending, like the CDS daily pressure-level netCDF.
    - cpc: ``precip`` (units "mm", daily total) dims ``(time, lat, lon)``, descending cell
      centres, NaN over ocean stored as ``_FillValue = missing_value = -9.96921e36``.
    - olr: ``olr`` (W/m^2) dims ``(time, lat, lon)``, descending node grid, packed int16
      (``scale_factor 0.01``, ``add_offset 327.65``, ``_FillValue 32767``).

    Years are generated one at a time and written in blocks of days (:func:`block_days`, so
    that memory holds ~``BLOCK_BYTES`` whatever the grids: a year of ERA5 at the paper's 0.25
    degrees is 15.2 GB of float32), with the spectral state carried across year boundaries; a year's
    files depend only on the seed (and the grids and levels), not on the other requested
    years.
    """
    out_dir = Path(out_dir)
    years = sorted({int(y) for y in years})
    if not years:
        raise ValueError("write_synthetic needs at least one year")
    levels_arr = np.asarray(levels, dtype=np.float64)
    heights = pressure_to_height(levels_arr)
    world = _World(seed)
    era5_lat, era5_lon = _node_grid(era5_resolution)
    cpc_lat, cpc_lon = _centre_grid(cpc_resolution)
    olr_lat, olr_lon = _node_grid(olr_resolution)
    era5, cpc, olr = (
        _GridWorld(world, lat, lon)
        for lat, lon in ((era5_lat, era5_lon), (cpc_lat, cpc_lon), (olr_lat, olr_lon))
    )
    cpc_ocean = cpc.land <= 0.5

    for year, coeffs in world.coefficients(years):
        dates = pd.date_range(f"{year}-01-01", f"{year}-12-31", freq="D")
        doy = dates.day_of_year.to_numpy().astype(np.float64)
        gauge_rng = np.random.default_rng([seed, 4, year])
        satellite_rng = np.random.default_rng([seed, 5, year])
        streams = []
        try:
            era5_file, cpc_file, olr_file = streams = [
                _era5_stream(out_dir / "era5" / f"{year}.nc", dates, levels_arr, era5_lat,
                             era5_lon, seed),
                _cpc_stream(out_dir / "cpc" / f"{year}.nc", dates, cpc_lat, cpc_lon, seed),
                _olr_stream(out_dir / "olr" / f"{year}.nc", dates, olr_lat, olr_lon, seed),
            ]  # fmt: skip
            era5_days = block_days(len(era5_lat) * len(era5_lon), len(levels_arr))
            for start in range(0, len(dates), BLOCK_DAYS):
                block = slice(start, min(start + BLOCK_DAYS, len(dates)))
                # ERA5 in sub-blocks of era5_days (its grid is the largest by far); the gauge
                # and satellite noise is drawn per BLOCK_DAYS block, so the files do not
                # depend on era5_days
                for sub in range(block.start, block.stop, era5_days):
                    part = slice(sub, min(sub + era5_days, block.stop))
                    days = era5.days(doy[part], coeffs[part])
                    t = np.empty((part.stop - part.start, len(levels_arr), len(era5_lat),
                                  len(era5_lon)), np.float32)  # fmt: skip
                    for k, z in enumerate(heights):
                        t[:, k] = era5.temperature(z, days)
                    del days
                    era5_file.write(part, t)
                    del t
                # Gauges: gauge-scale variability of the drive and a lognormal intensity factor.
                drive, moisture = cpc.rain(cpc.days(doy[block], coeffs[block]))
                drive += 0.3 * gauge_rng.standard_normal(drive.shape, np.float32)
                noise = gauge_rng.standard_normal(drive.shape, np.float32)
                precip = _rain_rate(drive, moisture) * np.exp(0.4 * noise - 0.08)
                precip[:, cpc_ocean] = np.nan  # computed everywhere, observed over land only
                cpc_file.write(block, precip)
                values = olr.olr(olr.days(doy[block], coeffs[block]))
                flux = values + 2.0 * satellite_rng.standard_normal(values.shape, np.float32)
                olr_file.write(block, flux)
        except BaseException:
            for stream in streams:
                stream.close()
                stream.path.unlink(missing_ok=True)  # no half-written year is left behind
            raise
        for stream in streams:
            stream.close()
