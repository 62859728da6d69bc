#include "textflag.h"

// func prefetchwSlots(w unsafe.Pointer, slots *int32, n int)
TEXT ·prefetchwSlots(SB), NOSPLIT|NOFRAME, $0-24
	MOVQ w+0(FP), AX
	MOVQ slots+8(FP), BX
	MOVQ n+16(FP), CX
	TESTQ CX, CX
	JLE done
loop:
	MOVLQSX (BX), DX
	SHLQ $5, DX
	ADDQ AX, DX
	// PREFETCHW (DX), which the Go assembler does not know: 0F 0D /1.
	BYTE $0x0F; BYTE $0x0D; BYTE $0x0A
	ADDQ $4, BX
	DECQ CX
	JNZ loop
done:
	RET
