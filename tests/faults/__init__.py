"""The fault suite: real processes killed, frozen and cut off; marked faults by folder."""
