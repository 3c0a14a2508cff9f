"""Golden numbers of DESIGN.md, kept in one place."""

WRN_40_2_PARAMS = {10: 2_243_546, 100: 2_255_156}
WRN_40_2_MACS = 327_599_360  # DESIGN.md: ≈ 327.6 M
TF_CNN_PARAMS = 122_570

CANDIDATES = ("baseline", "identity", "mbconv_e6_k3", "conv_bn_e1", "conv_bn_e2", "resnet_e2", "bottleneck_e2")

# Parameter counts at WRN-40-2 positions (BN affine included); None = does not fit.
WRN_40_2_CANDIDATE_PARAMS = {
    1: (14_432, None, 5_920, 13_952, 27_840, 28_416, 40_832),
    7: (57_536, None, 21_056, 55_552, 110_976, 113_152, 162_560),
    18: (295_424, 0, 206_848, 295_424, 590_592, 590_592, 656_640),
}
