"""Cameras: what a person would check in the pictures, as assertions (sky up, road down, boxes, occlusion)."""

import numpy as np
import pytest
from scipy.ndimage import binary_erosion

from jtd3.backends.base import Vehicles
from jtd3.backends.sim import SimConfig
from jtd3.backends.sim.render import FrontCamera, build_town_raster, render_birdeye
from jtd3.roads.towns import load_town

CFG = SimConfig()
EGO = (250.0, 129.5, 180.0)  # road 4 lane 1, heading west


@pytest.fixture(scope="module")
def cam():
    raster = build_town_raster(load_town("town01"), CFG.render)
    return FrontCamera(CFG.camera, CFG.render, raster)


def npcs(*rows):
    """rows of (metres ahead of the ego, metres right of the ego, id)."""
    x, y, yaw = EGO
    loc = np.array([[x - a, y - r, 0.0] for a, r, _ in rows])  # heading west: ahead = -x, right = -y
    return Vehicles(ids=np.array([i for *_, i in rows]), location=loc, yaw=np.full(len(rows), 180.0),
                    velocity=np.zeros((len(rows), 3)), extent=np.tile([2.2, 0.95, 0.75], (len(rows), 1)))


def test_sky_above_road_below_and_deterministic(cam):
    img = cam.render(*EGO)
    assert img.shape == (84, 84) and img.dtype == np.uint8
    assert img[0].min() >= CFG.render.sky  # sky at the top
    bottom = img[-5:, 35:50]
    assert abs(float(np.median(bottom)) - CFG.render.asphalt) < 15  # the lane in front of the bumper
    assert np.array_equal(img, cam.render(*EGO))


def test_vehicle_ahead_is_drawn_where_it_should_be(cam):
    empty = cam.render(*EGO)
    ahead = cam.render(*EGO, npcs((15.0, 0.0, 7)))
    right = cam.render(*EGO, npcs((15.0, 4.0, 7)))
    d_ahead = np.argwhere(ahead != empty)
    d_right = np.argwhere(right != empty)
    assert len(d_ahead) > 30 and abs(d_ahead[:, 1].mean() - 41.5) < 3  # centred
    assert d_right[:, 1].mean() > 50  # 4 m to the right shows right of centre
    # box straddles the horizon row (camera 1.5 m high, box 1.5 m tall) and stands on the ground below it
    assert d_ahead[:, 0].min() < 42 < d_ahead[:, 0].max()


def test_near_vehicle_occludes_far_vehicle(cam):
    empty = cam.render(*EGO)
    near = cam.render(*EGO, npcs((8.0, 0.0, 1)))
    far = cam.render(*EGO, npcs((25.0, 0.0, 2)))
    both = cam.render(*EGO, npcs((25.0, 0.0, 2), (8.0, 0.0, 1)))
    both_swapped = cam.render(*EGO, npcs((8.0, 0.0, 1), (25.0, 0.0, 2)))
    covered = binary_erosion(near != empty)  # box interiors (edges are anti-aliased against what is behind)
    assert np.array_equal(both[covered], near[covered])  # the far box is hidden behind the near one
    assert np.array_equal(both, both_swapped)  # independent of list order
    assert ((far != empty) & ~(near != empty)).sum() == 0  # entirely hidden here


def test_vehicle_beside_and_behind_the_camera_is_clipped_not_smeared(cam):
    img = cam.render(*EGO, npcs((3.0, 3.5, 3), (-10.0, 0.0, 4)))  # alongside (rear behind the lens), and behind
    empty = cam.render(*EGO)
    diff = np.argwhere(img != empty)
    assert len(diff) > 0 and diff[:, 1].min() > 42  # only on the right side


def test_birdeye_heading_up_ego_centred():
    raster = build_town_raster(load_town("town01"), CFG.render)
    img = render_birdeye(raster, EGO, None, None, 84, 84, 0.5, CFG.render)
    ego = np.argwhere(img == CFG.render.ego)
    assert abs(ego[:, 1].mean() - 41.5) < 1.0 and ego[:, 0].mean() > 42  # below the centre, heading up
    column_ahead = img[5:35, 41]
    assert np.median(column_ahead) == CFG.render.asphalt  # the road continues straight ahead (west)
    side = img[40, 0:10]
    assert np.median(side) != CFG.render.asphalt  # sidewalk / buildings beside
