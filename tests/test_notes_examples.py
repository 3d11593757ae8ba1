"""The worked examples of the study notes, computed by gpunet. Where the notes
contradict the maths, the maths wins and the test says which number was a slip."""
import numpy
import pytest

from gpunet import nn, ops

from .helpers import assert_close

VERTICAL = numpy.array([[1, 0, -1], [1, 0, -1], [1, 0, -1]], "float32")
HORIZONTAL = VERTICAL.T.copy()


def conv(image, kernel, stride=1):
    """One image and one filter through the Conv2d op (cross-correlation)."""
    y, _ = ops.conv2d_forward(numpy.asarray(image, "float32")[None, None],
                              numpy.asarray(kernel, "float32")[None, None], None, stride, 0)
    return y[0, 0]


def test_six_by_six_vertical_edge_example():
    image = [[3, 0, 1, 2, 7, 4], [1, 5, 8, 9, 3, 1], [2, 7, 2, 5, 1, 3],
             [0, 1, 3, 1, 7, 8], [4, 2, 1, 6, 2, 8], [2, 4, 5, 2, 3, 9]]
    expected = [[-5, -4, 0, 8], [-10, -2, 2, 3], [0, -2, -4, -7], [-3, -2, -3, -16]]
    assert_close(conv(image, VERTICAL), expected, 0, 0)
    # the first entry, as the notes spell it out: 3+1+2+0+0+0-1-8-2 = -5
    assert conv(image, VERTICAL)[0, 0] == 3 * 1 + 1 * 1 + 2 * 1 - 1 - 8 - 2


def test_step_images_light_to_dark_and_dark_to_light():
    """The notes draw the 10/0 images with 7 columns but a 4x4 result, which a 3x3
    filter gives only on 6 columns: the images are 6x6."""
    light_left = numpy.tile([10, 10, 10, 0, 0, 0], (6, 1))
    assert_close(conv(light_left, VERTICAL), numpy.tile([0, 30, 30, 0], (4, 1)), 0, 0)
    assert_close(conv(light_left[:, ::-1], VERTICAL), numpy.tile([0, -30, -30, 0], (4, 1)), 0, 0)
    # with 7 columns the output would be 4x5
    assert conv(numpy.tile([10, 10, 10, 0, 0, 0, 0], (6, 1)), VERTICAL).shape == (4, 5)


def test_horizontal_edge_example():
    image = numpy.array([[10, 10, 10, 0, 0, 0]] * 3 + [[0, 0, 0, 10, 10, 10]] * 3)
    expected = [[0, 0, 0, 0], [30, 10, -10, -30], [30, 10, -10, -30], [0, 0, 0, 0]]
    assert_close(conv(image, HORIZONTAL), expected, 0, 0)


def test_strided_convolution_example():
    """7x7 * 3x3 with stride 2 -> floor((7 + 0 - 3)/2 + 1) = 3. The notes' copy of
    the lecture image is garbled; on the lecture's image gpunet gives 7 of the 9
    printed values, and 88 and 117 where the slide prints 83 and 127: those two
    are arithmetic slips, as the hand expansions below show."""
    image = numpy.array([[2, 3, 7, 4, 6, 2, 9], [6, 6, 9, 8, 7, 4, 3], [3, 4, 8, 3, 8, 9, 7],
                         [7, 8, 3, 6, 6, 3, 4], [4, 2, 1, 8, 3, 4, 6], [3, 2, 4, 1, 9, 8, 3],
                         [0, 1, 3, 9, 2, 1, 4]])
    kernel = numpy.array([[3, 4, 4], [1, 0, 2], [-1, 0, 3]])
    y = conv(image, kernel, stride=2)
    assert y.shape == (3, 3)
    assert_close(y, [[91, 100, 88], [69, 91, 117], [44, 72, 74]], 0, 0)
    assert y[0, 2] == 6*3 + 2*4 + 9*4 + 7*1 + 4*0 + 3*2 + 8*-1 + 9*0 + 7*3 == 88  # noqa: E226
    assert y[1, 2] == 8*3 + 9*4 + 7*4 + 6*1 + 3*0 + 4*2 + 3*-1 + 4*0 + 6*3 == 117  # noqa: E226


def test_padding_and_same_convolution_formulas():
    """n + 2p - f + 1: 6x6 with p=1 and f=3 stays 6x6; same padding p = (f-1)/2."""
    layer = nn.Conv2d(1, 1, 3, padding=1)
    assert layer(numpy.zeros((1, 1, 6, 6), "float32")).shape == (1, 1, 6, 6)
    for f in (3, 5):
        layer = nn.Conv2d(1, 1, f, padding="same")
        assert layer(numpy.zeros((1, 1, 6, 6), "float32")).shape == (1, 1, 6, 6)
        assert ops.normalize_padding("same", (f, f), (1, 1))[0] == ((f - 1) // 2,) * 2


def test_one_layer_parameter_count():
    """10 filters of 3x3x3: (27 + 1) * 10 = 280, whatever the image size."""
    assert sum(p.data.size for p in nn.Conv2d(3, 10, 3).parameters()) == 280


def test_softmax_regression_example():
    z = numpy.array([5.0, 2.0, -1.0, 3.0])
    t = numpy.exp(z)
    assert_close(t, [148.4, 7.4, 0.4, 20.1], 0, 0.05)
    assert_close(ops.softmax(z), [0.842, 0.042, 0.002, 0.114], 0, 5e-4)
    assert ops.softmax(z).sum() == pytest.approx(1.0)


def test_batch_norm_can_learn_the_identity():
    """If beta = mu and gamma = sqrt(sigma^2 + eps), batch norm returns z itself."""
    rng = numpy.random.default_rng(0)
    z = rng.standard_normal((8, 3)) * [1, 5, 0.2] + [3, -1, 0]
    bn = nn.BatchNorm1d(3).to(dtype="float64")
    bn.bias.data[...] = z.mean(0)
    bn.weight.data[...] = numpy.sqrt(z.var(0) + bn.eps)
    assert_close(bn(z), z, 1e-12, 1e-12)


def test_vanishing_and_exploding_linear_activations():
    """g(z) = z, b = 0, W = 1.5 I (or 0.5 I): the activation after L layers is
    1.5^L x (or 0.5^L x)."""
    x = numpy.ones((1, 2))
    for scale in (1.5, 0.5):
        layers = []
        for _ in range(20):
            layer = nn.Linear(2, 2, init=lambda s, fi, fo, r, v=scale: numpy.eye(2) * v)
            layers.append(layer.to(dtype="float64"))
        y = nn.Sequential(*layers)(x)
        assert_close(y, x * scale ** 20, 1e-12, 0)
