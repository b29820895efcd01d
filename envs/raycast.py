"""Column raycaster for the built-in maze (numba; no Ray, no torch).

One call renders one RGB frame and the scene labels read off the rays that drew it. Grid coordinates inside
this module are (u, v) = (column, row) of the maze text grid, in cells; u grows east, v grows south (down the
text). The env converts its pose (x east, y north, yaw counter-clockwise from +x) into these.

Projection (square pixels, no lens distortion): focal length f = (W / 2) / tan(fov / 2) pixels; pitch shears
the image so the horizon sits on row `H/2 - f*tan(pitch)` (pitch > 0 looks down). A wall face at perpendicular
distance d spans rows [horizon - f*(wall_h - eye)/d, horizon + f*eye/d); a pixel belongs to it when its centre
(row + 0.5) lies in that span. Below a wall: floor, cast per row (distance f*eye/(row + 0.5 - horizon)).
Above it: sky, a cylindrical panorama indexed by azimuth and elevation. Faces crossing v grid lines are drawn
darker (SIDE_SHADE) so corners read as in DMLab's lighting.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

# label slots written by render(): see envs/maze.py for their meaning
L_ROOM_STYLE, L_FLOOR_STYLE, L_WALL_STYLE, L_PAINTING = 0, 1, 2, 3
PAINT_U = (0.25, 0.75)  # painting extent across a wall face (fraction of the face width)
PAINT_H = (0.3, 0.75)  # painting extent up a wall face (fraction of the wall height)
SIDE_SHADE = 0.78  # brightness of faces that cross v grid lines (north/south faces)


@njit(cache=True)
def _cast(walls, pu, pv, ru, rv):
    """DDA from (pu, pv) along (ru, rv). Returns perp distance, side (0: crossed a u line), hit cell, from cell,
    face index (0 west, 1 east, 2 north, 3 south face of the hit cell) and the texture coordinate along the face."""
    mu, mv = int(math.floor(pu)), int(math.floor(pv))
    ddu = abs(1.0 / ru) if ru != 0.0 else 1e30
    ddv = abs(1.0 / rv) if rv != 0.0 else 1e30
    if ru < 0.0:
        su, side_u = -1, (pu - mu) * ddu
    else:
        su, side_u = 1, (mu + 1.0 - pu) * ddu
    if rv < 0.0:
        sv, side_v = -1, (pv - mv) * ddv
    else:
        sv, side_v = 1, (mv + 1.0 - pv) * ddv
    side = 0
    fu, fv = mu, mv
    rows, cols = walls.shape
    for _ in range(4 * (rows + cols)):
        fu, fv = mu, mv
        if side_u < side_v:
            side_u += ddu
            mu += su
            side = 0
        else:
            side_v += ddv
            mv += sv
            side = 1
        if mu < 0 or mv < 0 or mu >= cols or mv >= rows or walls[mv, mu]:
            break
    if side == 0:
        perp = side_u - ddu
        face = 0 if su > 0 else 1
        t = pv + perp * rv
        tex = t - math.floor(t)
        if su < 0:
            tex = 1.0 - tex
    else:
        perp = side_v - ddv
        face = 2 if sv > 0 else 3
        t = pu + perp * ru
        tex = t - math.floor(t)
        if sv > 0:
            tex = 1.0 - tex
    return max(perp, 1e-6), side, mu, mv, fu, fv, face, tex


@njit(cache=True)
def render(out, labels, paint_count, walls, cell_style, paint_at, wall_tex, floor_tex, paint_tex, sky,
           pu, pv, yaw, pitch, fov, eye, wall_h, min_paint_pixels):
    """Draw one frame into out (H,W,3) uint8 and its labels into labels (4,) int16 (style ids, painting id).

    walls (R,C) bool; cell_style (R,C) int16 room style of each open cell; paint_at (R,C,4) int16 painting
    pattern per wall face or -1; wall_tex (S,2,TS,TS,3) uint8 tinted per style, [:,1] shaded for faces crossing
    v lines; floor_tex (S,FS,FS,3) uint8; paint_tex (P,2,PS,PS,3) uint8; sky (SH,SW,3) uint8; yaw, pitch, fov in
    radians; paint_count (P,) int32 scratch.
    """
    H, W = out.shape[0], out.shape[1]
    TS = wall_tex.shape[2]
    FS = floor_tex.shape[1]
    PS = paint_tex.shape[2]
    SH, SW = sky.shape[0], sky.shape[1]
    half = math.tan(0.5 * fov)
    f = 0.5 * W / half
    horizon = 0.5 * H - f * math.tan(pitch)
    du, dv = math.cos(yaw), -math.sin(yaw)
    plu, plv = math.sin(yaw) * half, math.cos(yaw) * half  # camera plane points to the agent's right
    # per-row tables: floor distance below the horizon, sky row above it
    row_dist = np.zeros(H)
    row_sky = np.zeros(H, np.int64)
    for r in range(H):
        yc = r + 0.5
        if yc > horizon:
            row_dist[r] = f * eye / (yc - horizon)
        else:
            elev = math.atan((horizon - yc) / f)
            row_sky[r] = min(max(int((1.0 - elev / (0.5 * math.pi)) * SH), 0), SH - 1)
    paint_count[:] = 0
    c0 = W // 2
    labels[L_ROOM_STYLE] = -1
    labels[L_FLOOR_STYLE] = -1
    labels[L_WALL_STYLE] = -1
    labels[L_PAINTING] = -1
    two_pi = 2.0 * math.pi
    rows, cols = walls.shape
    for c in range(W):
        cam = 2.0 * (c + 0.5) / W - 1.0
        ru, rv = du + plu * cam, dv + plv * cam
        perp, side, hu, hv, fu, fv, face, tex = _cast(walls, pu, pv, ru, rv)
        style = cell_style[fv, fu]
        top = horizon - f * (wall_h - eye) / perp
        bottom = horizon + f * eye / perp
        pid = -1
        if 0 <= hv < rows and 0 <= hu < cols:
            pid = paint_at[hv, hu, face]
        paint_col = pid >= 0 and PAINT_U[0] <= tex < PAINT_U[1]
        px = min(int((tex - PAINT_U[0]) / (PAINT_U[1] - PAINT_U[0]) * PS), PS - 1) if paint_col else 0
        tx = min(int(tex * TS), TS - 1)
        az = yaw - math.atan(cam * half)
        sx = int((az / two_pi - math.floor(az / two_pi)) * SW) % SW
        if c == c0:
            labels[L_WALL_STYLE] = style
            labels[L_ROOM_STYLE] = style
        for r in range(H):
            yc = r + 0.5
            if yc >= top and yc < bottom:  # wall
                h = (bottom - yc) / (bottom - top)  # height on the wall, 0 floor .. 1 top
                if paint_col and PAINT_H[0] <= h < PAINT_H[1]:
                    py = min(int((PAINT_H[1] - h) / (PAINT_H[1] - PAINT_H[0]) * PS), PS - 1)
                    out[r, c, 0] = paint_tex[pid, side, py, px, 0]
                    out[r, c, 1] = paint_tex[pid, side, py, px, 1]
                    out[r, c, 2] = paint_tex[pid, side, py, px, 2]
                    paint_count[pid] += 1
                else:
                    ty = min(int((1.0 - h) * TS), TS - 1)
                    out[r, c, 0] = wall_tex[style, side, ty, tx, 0]
                    out[r, c, 1] = wall_tex[style, side, ty, tx, 1]
                    out[r, c, 2] = wall_tex[style, side, ty, tx, 2]
            elif yc >= bottom:  # floor
                dist = row_dist[r]
                wu, wv = pu + ru * dist, pv + rv * dist
                cu, cv = int(math.floor(wu)), int(math.floor(wv))
                fs = -1
                if 0 <= cv < rows and 0 <= cu < cols:
                    fs = cell_style[cv, cu]
                if fs < 0:  # rounding at a wall's foot: use the cell the ray came from
                    fs = style
                ix = min(int((wu - cu) * FS), FS - 1)
                iy = min(int((wv - cv) * FS), FS - 1)
                out[r, c, 0] = floor_tex[fs, iy, ix, 0]
                out[r, c, 1] = floor_tex[fs, iy, ix, 1]
                out[r, c, 2] = floor_tex[fs, iy, ix, 2]
                if c == c0:  # the lowest floor pixel of the centre column names the room (rows go down)
                    labels[L_ROOM_STYLE] = fs
                    labels[L_FLOOR_STYLE] = fs
            else:  # sky
                sy = row_sky[r]
                out[r, c, 0] = sky[sy, sx, 0]
                out[r, c, 1] = sky[sy, sx, 1]
                out[r, c, 2] = sky[sy, sx, 2]
    best, best_n = -1, 0
    for p in range(paint_count.shape[0]):
        if paint_count[p] > best_n:
            best, best_n = p, paint_count[p]
    if best_n >= min_paint_pixels:
        labels[L_PAINTING] = best


@njit(cache=True)
def collides(walls, u, v, radius):
    """True when a disc of `radius` at (u, v) overlaps a wall cell (or leaves the grid)."""
    rows, cols = walls.shape
    for cv in range(int(math.floor(v - radius)), int(math.floor(v + radius)) + 1):
        for cu in range(int(math.floor(u - radius)), int(math.floor(u + radius)) + 1):
            if cu < 0 or cv < 0 or cu >= cols or cv >= rows:
                return True
            if walls[cv, cu]:
                # closest point of the cell to the centre
                nu = min(max(u, cu), cu + 1.0)
                nv = min(max(v, cv), cv + 1.0)
                if (nu - u) ** 2 + (nv - v) ** 2 < radius * radius:
                    return True
    return False


def empty_labels() -> np.ndarray:
    return np.full(4, -1, np.int16)
