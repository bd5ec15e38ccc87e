"""Published values the tests check against, in one place.

* ``../shared/REFERENCE.md`` (from the DKS and TAT papers and the public ``dks`` package): TAT Leaky ReLU
  parameters of vanilla ResNet-shaped nets, the eta sweep at depth 101, DKS local slopes, and the
  reference's regression values for a ResNet-101 with shortcut weight 0.6.
* The public ``dks`` package's own parameter and value tests (``tests/test_activation_transform.py`` of
  google-deepmind/dks), for the same ResNet-101 with shortcut weight 0.6: used by ``test_compat.py``.
"""

# TAT Leaky ReLU, eta = 0.9, vanilla ResNet-shaped nets: depth -> (negative slope, output scale).
PUBLISHED_TAT = {50: (0.4259071946, 1.3011191752), 101: (0.5704395324, 1.2284042441),
                 152: (0.6386479139, 1.1918827707), 200: (0.6789062172, 1.1700454285)}
# Eta sweep at depth 101: eta -> negative slope.
PUBLISHED_ETA_SWEEP_101 = {0.5: 0.7927, 0.7: 0.717, 0.8: 0.662, 0.9: 0.5704, 0.95: 0.4763, 0.98: 0.3405}
# DKS, zeta = 1.5, plain nets of L nonlinear layers: L -> local C'(1) = 1.5^(1/L).
PUBLISHED_DKS_SLOPES = {49: 1.00830913, 100: 1.00406288, 151: 1.00268881, 199: 1.00203959}

# The reference's regression values, ResNet-101 with shortcut weight 0.6.
RESNET101_W06_TAT_LEAKY_ETA_075 = {"negative_slope": 0.6291800290346146, "output_scale": 1.196996549778802}
SOFTPLUS_DKS = {"input_scale": 0.18761008168267976, "input_shift": 0.40688063442262007,
                "output_shift": -0.9213466151411376, "output_scale": 8.878672543665223}
SOFTPLUS_TAT = {"input_scale": 0.15011489794748328, "input_shift": 0.5374599901127068,
                "output_shift": -0.996481014465811, "output_scale": 10.54880187880574}
PUBLISHED_PARAMS = [
    (("softplus",), "DKS", {"softplus": SOFTPLUS_DKS}),
    (("tanh", "softplus"), "DKS", {
        "tanh": {"input_scale": 0.07461073057540868, "input_shift": 0.5566915199964182,
                 "output_shift": -0.5034378768692127, "output_scale": 18.002635964442558},
        "softplus": SOFTPLUS_DKS}),
    (("leaky_relu",), "DKS", {
        "leaky_relu": {"negative_slope": 0.8761257073473065, "input_shift": -6.372924855154692e-13,
                       "output_shift": -0.049418692997275034, "output_scale": 1.0651832705682147}}),
    (("softplus",), "TAT", {"softplus": SOFTPLUS_TAT}),
    (("tanh", "softplus"), "TAT", {
        "tanh": {"input_scale": 0.0580205218578313, "input_shift": 0.5218639804099805,
                 "output_shift": -0.4796430704354356, "output_scale": 22.36066261763117},
        "softplus": SOFTPLUS_TAT}),
    (("leaky_relu",), "TAT", {"leaky_relu": {"output_scale": 1.196996549778802,
                                             "negative_slope": 0.6291800290346146}}),
    (("gelu", "gelu_exact"), "DKS", {
        "gelu": {"input_scale": 0.07036271496383567, "input_shift": 0.2586837248593587,
                 "output_shift": -0.15758328114374964, "output_scale": 20.249573305194307},
        "gelu_exact": {"input_scale": 0.07043253126531114, "input_shift": 0.259489297927707,
                       "output_shift": -0.15815378961903598, "output_scale": 20.21158902315857}}),
]
PUBLISHED_RELU_DKS = {"input_shift": 1.0, "input_scale": 0.3685360046708044,
                      "output_shift": -1.000373858553784, "output_scale": 2.721729988761473}

# Transformed values at x = 0.6 and x = -0.6.
PUBLISHED_VALUES = [
    ("softplus", "DKS", (0.5205088334781294, -0.6970897398761904)),
    ("tanh", "DKS", (0.6910746968773931, -0.5122335409369118)),
    ("softplus", "TAT", (0.6923574763139374, -0.4935166367766701)),
    ("tanh", "TAT", (0.6860178437500071, -0.49030275427738146)),
    ("leaky_relu", "TAT", (0.7954047194402861, -0.2955187511683813)),
    ("gelu", "TAT", (0.6922557817568101, -0.491992384704867)),
    ("gelu_exact", "TAT", (0.6922429517529013, -0.49198103131465193)),
]
PUBLISHED_UNTRANSFORMED = {"tanh": (0.5370495669980353, -0.5370495669980353),
                           "softplus": (1.0374879504858856, 0.4374879504858857),
                           "relu": (0.6, 0.0), "leaky_relu": (0.6, -0.006)}
PUBLISHED_RELU_VALUES = (0.6053339463256114, -0.6486764456443863)
PUBLISHED_LEAKY_DKS_VALUES = (0.5628988987673328, -0.6649764416535503)

