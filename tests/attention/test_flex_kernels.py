"""Which compiled FlexAttention callable a sequence length gets (no compilation happens here)."""

from amylum.attention.backends import FlexKernels


def test_each_length_gets_its_own_static_kernel_until_the_limit():
    kernels = FlexKernels(static_limit=2)
    a, b = kernels.get(128, 128), kernels.get(256, 256)
    assert kernels.get(128, 128) is a  # the same length reuses its kernel
    assert a is not b
    # a code object of its own per length: dynamo's recompile count is per code object
    assert a._torchdynamo_orig_callable.__code__ is not b._torchdynamo_orig_callable.__code__
    assert a._torchdynamo_orig_callable.__code__.co_name == "flex_attention_128x128"


def test_lengths_past_the_limit_share_one_dynamic_kernel():
    kernels = FlexKernels(static_limit=1)
    static = kernels.get(128, 128)
    c, d = kernels.get(256, 256), kernels.get(384, 512)
    assert c is d and c is not static
    assert kernels.get(128, 128) is static  # lengths seen first keep their static kernels
