/*
 * serial.c - 16550A UART emulation for demo-vmm (see serial.h).
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "serial.h"

#define SERIAL_STATE_VERSION 1
#define SERIAL_STATE_LEN     (11 + 16)
#define RX_FIFO		     16
#define TX_BUF		     256

/* Register offsets. */
#define UART_RBR 0 /* DLAB 0 read */
#define UART_THR 0 /* DLAB 0 write */
#define UART_DLL 0 /* DLAB 1 */
#define UART_IER 1 /* DLAB 0 */
#define UART_DLM 1 /* DLAB 1 */
#define UART_IIR 2 /* read */
#define UART_FCR 2 /* write */
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define UART_MSR 6
#define UART_SCR 7

#define IER_RDI	     0x01 /* received data available */
#define IER_THRI     0x02 /* transmitter holding register empty */
#define IER_RLSI     0x04 /* receiver line status */
#define IER_MSI	     0x08 /* modem status */
#define IIR_NO_INT   0x01
#define IIR_MSI	     0x00
#define IIR_THRI     0x02
#define IIR_RDI	     0x04
#define IIR_RLSI     0x06
#define IIR_FIFO     0xc0
#define FCR_ENABLE   0x01
#define FCR_CLEAR_RX 0x02
#define FCR_CLEAR_TX 0x04
#define LCR_DLAB     0x80
#define MCR_DTR	     0x01
#define MCR_RTS	     0x02
#define MCR_OUT1     0x04
#define MCR_OUT2     0x08
#define MCR_LOOP     0x10
#define LSR_DR	     0x01
#define LSR_OE	     0x02
#define LSR_BI	     0x10
#define LSR_THRE     0x20
#define LSR_TEMT     0x40
#define MSR_DCTS     0x01
#define MSR_DDSR     0x02
#define MSR_TERI     0x04
#define MSR_DDCD     0x08
#define MSR_CTS	     0x10
#define MSR_DSR	     0x20
#define MSR_RI	     0x40
#define MSR_DCD	     0x80

struct serial {
	pthread_mutex_t lock;
	uint16_t base;
	int console_fd;
	uint8_t dll, dlm, ier, lcr, mcr, lsr, msr, scr, fcr;
	uint8_t thr_interrupt; /* THRE interrupt pending */
	uint8_t rx[RX_FIFO];
	uint8_t rx_head, rx_count;
	uint8_t tx[TX_BUF];
	unsigned int tx_len;
	uint64_t tx_total;
};

int serial_create(uint16_t base, int console_fd, struct serial **out,
		  struct vmm_err *err)
{
	struct serial *s = calloc(1, sizeof(*s));

	if (!s)
		return vmm_errf(err, -ENOMEM, "serial: no memory");
	pthread_mutex_init(&s->lock, NULL);
	s->base = base;
	s->console_fd = console_fd;
	/* Power-on values. */
	s->dll = 0x0c; /* 9600 baud */
	s->lsr = LSR_THRE | LSR_TEMT;
	s->msr = MSR_DCD | MSR_DSR | MSR_CTS;
	*out = s;
	return 0;
}

/* Write all of buf to the console, riding out EINTR, EAGAIN, short writes. */
static void console_out(int fd, const uint8_t *buf, size_t len)
{
	struct pollfd pfd = { .fd = fd, .events = POLLOUT };
	ssize_t n;

	while (len && fd >= 0) {
		n = write(fd, buf, len);
		if (n > 0) {
			buf += n;
			len -= n;
		} else if (n < 0 && errno == EAGAIN) {
			poll(&pfd, 1, 100);
		} else if (n < 0 && errno == EINTR) {
			continue;
		} else {
			return; /* console gone: drop output */
		}
	}
}

static void flush_locked(struct serial *s)
{
	console_out(s->console_fd, s->tx, s->tx_len);
	s->tx_len = 0;
}

/* Highest-priority pending interrupt, as IIR reports it. */
static uint8_t iir_locked(const struct serial *s)
{
	uint8_t fifo = (s->fcr & FCR_ENABLE) ? IIR_FIFO : 0;

	if ((s->ier & IER_RLSI) && (s->lsr & (LSR_OE | LSR_BI)))
		return fifo | IIR_RLSI;
	if ((s->ier & IER_RDI) && s->rx_count)
		return fifo | IIR_RDI;
	if ((s->ier & IER_THRI) && s->thr_interrupt)
		return fifo | IIR_THRI;
	if ((s->ier & IER_MSI) && (s->msr & 0x0f))
		return fifo | IIR_MSI;
	return fifo | IIR_NO_INT;
}

static void rx_push_locked(struct serial *s, uint8_t c)
{
	if (s->rx_count == RX_FIFO) {
		s->lsr |= LSR_OE;
		return;
	}
	s->rx[(s->rx_head + s->rx_count) % RX_FIFO] = c;
	s->rx_count++;
	s->lsr |= LSR_DR;
}

/* Modem status inputs: looped back from MCR, or a connected terminal. */
static void update_msr_locked(struct serial *s)
{
	uint8_t old = s->msr, in;

	if (s->mcr & MCR_LOOP)
		in = (s->mcr & MCR_RTS ? MSR_CTS : 0) |
		     (s->mcr & MCR_DTR ? MSR_DSR : 0) |
		     (s->mcr & MCR_OUT1 ? MSR_RI : 0) |
		     (s->mcr & MCR_OUT2 ? MSR_DCD : 0);
	else
		in = MSR_DCD | MSR_DSR | MSR_CTS;
	s->msr = in | (old & 0x0f);
	if ((in ^ old) & MSR_CTS)
		s->msr |= MSR_DCTS;
	if ((in ^ old) & MSR_DSR)
		s->msr |= MSR_DDSR;
	if ((in ^ old) & MSR_DCD)
		s->msr |= MSR_DDCD;
	if ((old & MSR_RI) && !(in & MSR_RI))
		s->msr |= MSR_TERI;
}

static void write_reg(struct serial *s, unsigned int reg, uint8_t v)
{
	switch (reg) {
	case UART_THR:
		if (s->lcr & LCR_DLAB) {
			s->dll = v;
			break;
		}
		s->tx_total++;
		if (s->mcr & MCR_LOOP) {
			rx_push_locked(s, v);
		} else {
			s->tx[s->tx_len++] = v;
			if (v == '\n' || s->tx_len == TX_BUF)
				flush_locked(s);
		}
		/* Transmission is instant: THR is empty again. */
		s->thr_interrupt = 1;
		break;
	case UART_IER:
		if (s->lcr & LCR_DLAB) {
			s->dlm = v;
			break;
		}
		if (!(s->ier & IER_THRI) && (v & IER_THRI))
			s->thr_interrupt = 1;
		s->ier = v & 0x0f;
		break;
	case UART_FCR:
		if (v & FCR_CLEAR_RX) {
			s->rx_count = 0;
			s->rx_head = 0;
			s->lsr &= ~LSR_DR;
		}
		s->fcr = v & 0xc9;
		break;
	case UART_LCR:
		s->lcr = v;
		break;
	case UART_MCR:
		s->mcr = v & 0x1f;
		update_msr_locked(s);
		break;
	case UART_LSR:
	case UART_MSR:
		break; /* read-only (factory test mode) */
	case UART_SCR:
		s->scr = v;
		break;
	}
}

static uint8_t read_reg(struct serial *s, unsigned int reg)
{
	uint8_t v;

	switch (reg) {
	case UART_RBR:
		if (s->lcr & LCR_DLAB)
			return s->dll;
		if (!s->rx_count)
			return 0;
		v = s->rx[s->rx_head];
		s->rx_head = (s->rx_head + 1) % RX_FIFO;
		if (!--s->rx_count)
			s->lsr &= ~LSR_DR;
		return v;
	case UART_IER:
		return (s->lcr & LCR_DLAB) ? s->dlm : s->ier;
	case UART_IIR:
		v = iir_locked(s);
		if ((v & 0x0f) == IIR_THRI)
			s->thr_interrupt = 0;
		return v;
	case UART_LCR:
		return s->lcr;
	case UART_MCR:
		return s->mcr;
	case UART_LSR:
		v = s->lsr;
		s->lsr &= ~(LSR_OE | LSR_BI);
		return v;
	case UART_MSR:
		v = s->msr;
		s->msr &= 0xf0;
		return v;
	default:
		return s->scr;
	}
}

int serial_pio(void *opaque, uint16_t port, bool is_write, uint8_t *data,
	       unsigned int size)
{
	struct serial *s = opaque;
	unsigned int i;

	if (port < s->base || port >= s->base + 8) {
		if (!is_write)
			memset(data, 0xff, size);
		return 0;
	}
	pthread_mutex_lock(&s->lock);
	/* A wider access touches consecutive registers, byte by byte. */
	for (i = 0; i < size && port + i < s->base + 8u; i++) {
		if (is_write)
			write_reg(s, port - s->base + i, data[i]);
		else
			data[i] = read_reg(s, port - s->base + i);
	}
	pthread_mutex_unlock(&s->lock);
	return 0;
}

int serial_receive(struct serial *s, const uint8_t *buf, unsigned int len)
{
	unsigned int i;
	int r = 0;

	pthread_mutex_lock(&s->lock);
	for (i = 0; i < len; i++) {
		if (s->rx_count == RX_FIFO) {
			r = -ENOSPC;
			break;
		}
		rx_push_locked(s, buf[i]);
	}
	pthread_mutex_unlock(&s->lock);
	return r;
}

void serial_flush(struct serial *s)
{
	pthread_mutex_lock(&s->lock);
	flush_locked(s);
	pthread_mutex_unlock(&s->lock);
}

void serial_set_console(struct serial *s, int console_fd)
{
	pthread_mutex_lock(&s->lock);
	flush_locked(s);
	s->console_fd = console_fd;
	pthread_mutex_unlock(&s->lock);
}

int serial_save_state(struct serial *s, struct blobset *set,
		      struct vmm_err *err)
{
	uint8_t *b, *p;
	size_t len;

	b = blob_alloc(SERIAL_STATE_VERSION, SERIAL_STATE_LEN, &len);
	if (!b)
		return vmm_errf(err, -ENOMEM, "serial: no memory");
	p = b + BLOB_HDR;
	pthread_mutex_lock(&s->lock);
	flush_locked(s);
	p[0] = s->dll;
	p[1] = s->dlm;
	p[2] = s->ier;
	p[3] = s->lcr;
	p[4] = s->mcr;
	p[5] = s->lsr;
	p[6] = s->msr;
	p[7] = s->scr;
	p[8] = s->fcr;
	p[9] = s->thr_interrupt;
	p[10] = s->rx_count;
	/* The FIFO is stored from its head, so rx_head restores as 0. */
	for (unsigned int i = 0; i < s->rx_count; i++)
		p[11 + i] = s->rx[(s->rx_head + i) % RX_FIFO];
	pthread_mutex_unlock(&s->lock);
	return blobset_add(set, "serial", b, len, err);
}

int serial_restore_state(struct serial *s, const struct blobset *set,
			 struct vmm_err *err)
{
	const uint8_t *p;
	size_t len;
	int r;

	r = blob_payload(set, "serial", SERIAL_STATE_VERSION, SERIAL_STATE_LEN,
			 SERIAL_STATE_LEN, &p, &len, err);
	if (r < 0)
		return r;
	if (p[10] > RX_FIFO)
		return vmm_errf(err, -EBADMSG, "state 'serial': rx count %u",
				p[10]);
	pthread_mutex_lock(&s->lock);
	s->dll = p[0];
	s->dlm = p[1];
	s->ier = p[2];
	s->lcr = p[3];
	s->mcr = p[4];
	s->lsr = p[5];
	s->msr = p[6];
	s->scr = p[7];
	s->fcr = p[8];
	s->thr_interrupt = p[9];
	s->rx_count = p[10];
	s->rx_head = 0;
	memcpy(s->rx, p + 11, RX_FIFO);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

uint64_t serial_tx_count(struct serial *s)
{
	uint64_t n;

	pthread_mutex_lock(&s->lock);
	n = s->tx_total;
	pthread_mutex_unlock(&s->lock);
	return n;
}

void serial_destroy(struct serial *s)
{
	if (!s)
		return;
	serial_flush(s);
	pthread_mutex_destroy(&s->lock);
	free(s);
}
