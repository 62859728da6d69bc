package main

import "time"

func since(t time.Time) time.Duration { return time.Since(t).Round(time.Second) }
