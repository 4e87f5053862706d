import numpy as np
import pytest
import xarray as xr

from slams.grid import area_weights, cell_edges, target_grid


@pytest.mark.parametrize(
    ("resolution", "shape"), [(5.625, (32, 64)), (11.25, (16, 32)), (1.5, (120, 240))]
)
def test_target_grid_shapes_and_centres(resolution, shape):
    lat, lon = target_grid(resolution)
    assert (lat.size, lon.size) == shape
    assert lat[0] == pytest.approx(-90 + resolution / 2)
    assert lat[-1] == pytest.approx(90 - resolution / 2)
    assert lon[0] == pytest.approx(resolution / 2)
    assert lon[-1] == pytest.approx(360 - resolution / 2)
    assert np.allclose(np.diff(lat), resolution) and np.allclose(np.diff(lon), resolution)


def test_target_grid_rejects_resolution_not_dividing_180():
    with pytest.raises(ValueError, match="does not divide"):
        target_grid(7.0)


def test_cell_edges_midpoints_and_pole_clipping():
    assert np.allclose(cell_edges(np.array([0.0, 1.0, 3.0])), [-0.5, 0.5, 2.0, 4.0])
    # Node grid with poles (descending, like ERA5): pole rows become half cells.
    nodes = np.arange(90.0, -90.1, -30.0)
    edges = cell_edges(nodes, -90.0, 90.0)
    assert np.allclose(edges, [90, 75, 45, 15, -15, -45, -75, -90])


def test_area_weights_mean_one_symmetric_and_cosine_for_cell_centres():
    lat, _ = target_grid(5.625)
    weights = area_weights(lat)
    assert weights.dims == ("lat",)
    assert np.allclose(weights["lat"], lat)
    assert weights.mean() == pytest.approx(1.0)
    assert np.allclose(weights.values, weights.values[::-1])
    ratio = weights.values / np.cos(np.deg2rad(lat))
    assert np.allclose(ratio, ratio[0])


def test_area_weights_give_the_analytic_area_of_a_band():
    # Fraction of the sphere between latitudes a and b is (sin b - sin a) / 2.
    lat, _ = target_grid(7.5)
    weights = area_weights(xr.DataArray(lat, dims="lat"))
    band = (lat > 0) & (lat < 30)
    assert weights.values[band].sum() / weights.size == pytest.approx(np.sin(np.pi / 6) / 2)


def test_area_weights_node_grid_pole_cap():
    nodes = np.linspace(90, -90, 25)  # 7.5 degree nodes including both poles
    weights = area_weights(nodes).values
    cap = (1 - np.sin(np.deg2rad(90 - 3.75))) / 2  # area fraction of the polar cap
    assert weights[0] / weights.sum() == pytest.approx(cap)
    assert weights[0] == pytest.approx(weights[-1])
