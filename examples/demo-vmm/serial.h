/*
 * serial.h - a 16550A-compatible UART at an I/O port base (COM1, 0x3f8).
 *
 * Registers: THR/RBR, IER, IIR/FCR, LCR (with DLAB), MCR (with loopback),
 * LSR, MSR, SCR, DLL/DLM.  Transmitted bytes go to a console fd given by
 * the VMM (borrowed, not closed), buffered per line.  Interrupt state
 * (IIR) is computed as the chip would, but no interrupt line is wired:
 * the built-in guest polls.  Thread-safe: every vCPU may access it.
 */
#ifndef DEMO_VMM_SERIAL_H
#define DEMO_VMM_SERIAL_H

#include <stdbool.h>
#include <stdint.h>

#include "util.h"

struct serial;

int serial_create(uint16_t base, int console_fd, struct serial **out,
		  struct vmm_err *err);

/*
 * Port access handler, shaped for struct vcpu_ops.pio (opaque is the
 * struct serial).  Ports outside [base, base + 8) read as 0xff and
 * ignore writes.
 */
int serial_pio(void *opaque, uint16_t port, bool is_write, uint8_t *data,
	       unsigned int size);

/* Queue received bytes (what the guest reads from RBR); -ENOSPC if full. */
int serial_receive(struct serial *s, const uint8_t *buf, unsigned int len);

/* Write out buffered console output now. */
void serial_flush(struct serial *s);

/* Change the console fd (borrowed), e.g. after a handoff. */
void serial_set_console(struct serial *s, int console_fd);

/*
 * Device state as blob "serial" appended to set: flushes output first,
 * then u8 fields dll, dlm, ier, lcr, mcr, lsr, msr, scr, fcr,
 * thr_interrupt, rx_count, rx_head, rx[16], in that order.
 */
int serial_save_state(struct serial *s, struct blobset *set,
		      struct vmm_err *err);
int serial_restore_state(struct serial *s, const struct blobset *set,
			 struct vmm_err *err);

/* Bytes the guest has written to THR since creation. */
uint64_t serial_tx_count(struct serial *s);

/* Flush and free.  NULL is fine. */
void serial_destroy(struct serial *s);

#endif
