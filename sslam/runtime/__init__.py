"""The runtime kernel every layer stands on: errors, atomic files, configuration, progress, schedules,
devices, snapshots and tracking. It knows nothing of audio, models or losses."""
