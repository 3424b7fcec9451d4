"""Both ends of the serial link, and the MuJoCo stand-in that plays the robot's firmware."""
