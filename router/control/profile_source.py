"""The profile a plan is made on, by the key the agents advertise: a shared profile by name
(simulated GPUs, at their time scale; real GPUs told GPULET_NVIDIA_PROFILE) with the
interference model fitted on it, or a profile the agents measured, read from Redis."""

from __future__ import annotations

from common.cluster import parse_named_key, parse_simulated_key
from common.interference import InterferenceModel
from common.profiles import DeviceProfile, find_profile
from common.store import Store
from router.scheduling.offline import interference_for


async def load_profile(
    store: Store, key: str
) -> tuple[DeviceProfile, InterferenceModel | None] | None:
    """(profile, interference) for `key`; None when the store has no profile under it."""
    named = parse_simulated_key(key) or parse_named_key(key)
    if named is not None:
        name, time_scale = named
        profile = find_profile(name)
        # Slowdowns are ratios: the fit on the profile holds for its time-scaled copy.
        interference, _ = interference_for(profile)
        return profile.time_scaled(time_scale), interference
    found = await store.profile(key)
    return (DeviceProfile.from_json(found[0]), None) if found is not None else None
