"""A stand-in simulation for the bundled example: integrates a damped oscillator.

    python3 examples/sim.py --damping 0.1 --frequency 2.0
"""

import argparse
import math


def simulate(damping: float, frequency: float, steps: int = 20000, dt: float = 1e-3) -> float:
    x, v = 1.0, 0.0
    for _ in range(steps):
        a = -(2 * math.pi * frequency) ** 2 * x - 2 * damping * v
        v += a * dt
        x += v * dt
    return x


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--damping", type=float, required=True)
    parser.add_argument("--frequency", type=float, required=True)
    args = parser.parse_args()
    print(f"damping={args.damping} frequency={args.frequency} "
          f"x_final={simulate(args.damping, args.frequency):.6f}")


if __name__ == "__main__":
    main()
