#!/usr/bin/python3
"""fit_vec.py: fits the polynomial coefficients of src/model/vec.c (exp and erf/erfc in float).

Method: linear least squares with a relative-error weight on 4000 Chebyshev points of the interval,
then Lawson's iteration (the weights multiplied by the pointwise error) towards the minimax fit.
The reference is Python's math.exp / math.erfc (double). Prints C initialisers and the fit error
(in double; the float kernels add their own rounding, which tests/model/test_vec.c measures).

  exp:  e^r = P(r),  r in [-ln2/2, ln2/2],  degree 6
  erfc: erfc(u) = t * exp(-u^2) * Q(t),  t = 1 / (1 + u/2),  u in [0, 10.1],  degree 9
        (the form of Abramowitz & Stegun 7.1.26 with its own coefficients)
  erf:  erf(z) = z * S(z^2),  |z| <= 0.875, degree 5 in z^2
usage: scripts/fit_vec.py
"""
import math
import numpy as np

def cheb(a, b, n=4000):
    k = np.arange(n)
    return 0.5 * (a + b) + 0.5 * (b - a) * np.cos((2 * k + 1) * np.pi / (2 * n))

def lawson(V, f, iters=60):
    """coefficients c minimising max |V c - f| / |f| (approximately)."""
    w = np.ones(len(f)) / len(f)
    best = None
    for _ in range(iters):
        sw = np.sqrt(w) / np.abs(f)
        c, *_ = np.linalg.lstsq(V * sw[:, None], f * sw, rcond=None)
        e = np.abs(V @ c - f) / np.abs(f)
        if best is None or e.max() < best[1]:
            best = (c, e.max())
        w = w * e
        w /= w.sum()
    return best

def show(name, c, err, x, f):
    cf = np.float32(c).astype(np.float64)  # the coefficients as the float kernels hold them
    ef = (np.abs(np.polyval(cf[::-1], x) - f) / np.abs(f)).max()
    print(f"/* {name}: max relative error of the fit {err:.2e}, {ef:.2e} with float coefficients */")
    print("{" + ", ".join("%.9ef" % np.float32(x) for x in c) + "}")

# exp
r = cheb(-math.log(2) / 2, math.log(2) / 2)
c, e = lawson(np.vander(r, 7, increasing=True), np.exp(r))
show("exp P(r), degree 6", c, e, r, np.exp(r))

# erfc
P = 0.5
u = cheb(0, 10.1)
t = 1 / (1 + P * u)
g = np.array([math.erfc(x) * math.exp(x * x) for x in u]) / t
c, e = lawson(np.vander(t, 10, increasing=True), g)
show("erfc Q(t), t = 1/(1 + u/2), degree 9", c, e, t, g)

# erf near 0
z = cheb(1e-6, 0.875)
f = np.array([math.erf(x) for x in z]) / z
c, e = lawson(np.vander(z * z, 6, increasing=True), f)
show("erf S(z^2), degree 5 in z^2", c, e, z * z, f)
