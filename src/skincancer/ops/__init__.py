"""Running things: process lifetimes, native stderr filtering, the nightly git/DVC loop of the GPU box."""
