#!/bin/sh
# Says hello, and what this container wrote where.
echo "$GREETING (hostname $(hostname))"
