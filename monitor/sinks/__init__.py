"""Where attributed events and findings leave rlguard."""
