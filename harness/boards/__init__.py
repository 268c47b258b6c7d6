"""What kind of device a board or phone is, from the text it prints: pure parsers and data
(Jetson power rails, the Raspberry Pi PMIC scope, Android's getprop and battery, Linux facts).
Below the drivers, which run the commands and hand the text here."""
